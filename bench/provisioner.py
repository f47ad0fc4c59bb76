"""make bench-provisioner: gardening a storm of devices in the DHCP, DNS and packet-filter layers, then
reconciling.

Real Kea's PostgreSQL host database (a lab Kea's, `kea-admin db-init`), a real BIND with the RPZ zones,
real nftables in a lab network namespace of the bench's own (the garden's table and sets, as the
service installs them), and provisioner's desired state in a fresh PostgreSQL database. `--devices`
devices (default 100,000) are gardened through `LayeredGarden` in batches of `--batch` (each device: a
MAC in Kea, an address in the RPZ zone and in the nftables `full` set; each batch one UPDATE and one
nftables transaction), confirmed in every layer. Then 1% drift is injected by hand, a third in each
layer (Kea host rows deleted with SQL, RPZ triggers deleted with `nsupdate`, set elements deleted with
`nft delete element`), and one full reconcile runs and repairs it. Before the drift, one reconcile runs
as the service's start-up one does (it finds nothing to repair).
Prints one `name=value` per line (settings first): apply_per_s (devices confirmed in every layer per
second, sustained over the whole storm), gardened (held by every layer), reconcile_first_seconds (the
start-up reconcile), reconcile_seconds (the next one, with the drift: every layer listed in full — Kea's
host rows, the RPZ zone by AXFR, the nftables sets — compared with the desired state and repaired),
drift_injected, drift_repaired; then per layer: apply_seconds_<layer> (time spent in the layer's own
calls during the storm), reconcile_seconds_<layer>, drift_injected_<layer>, drift_repaired_<layer>.
Run it with `python -P` (as the Makefile does): this file's name would otherwise hide the package.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Sequence
from ipaddress import IPv4Address

import asyncpg

from lazaretto_core import db
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.testing import create_database, database_dsn, drop_database
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.kea import KeaHosts, parse_mac
from provisioner.layers import Element, ElementKind, KeaLayer, Layer, NftLayer, RpzLayer
from provisioner.nft import NftConfig, NftGarden
from provisioner.reconcile import Reconciler
from provisioner.rpz import RpzAdapter, client_ip_owner

BASE_IP = ipaddress.IPv4Address("10.0.0.0")


def mac_of(i: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


def ip_of(i: int) -> str:
    return str(BASE_IP + i + 1)


class TimedLayer:
    """A layer, with the time spent in its own calls added up (the bench's per-layer figures)."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.name = layer.name
        self.kinds: frozenset[ElementKind] = layer.kinds
        self.seconds = 0.0

    def handles(self, element: Element) -> bool:
        return self.layer.handles(element)

    async def apply_many(self, elements: Sequence[Element]) -> None:
        started = time.monotonic()
        try:
            await self.layer.apply_many(elements)
        finally:
            self.seconds += time.monotonic() - started

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.layer.remove_many(elements)

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        return await self.layer.list_elements(known)


def nft_delete(netns: str, table: str, ips: list[str]) -> None:
    """Drift by hand in the packet filter: elements deleted with the `nft` command, as an operator would."""
    for first in range(0, len(ips), 500):
        elements = ", ".join(ips[first : first + 500])
        command = f"delete element inet {table} full_v4 {{ {elements} }}"
        subprocess.run(["ip", "netns", "exec", netns, "nft", command], check=True)


def nsupdate_delete(bind: LabBind, ips: list[str]) -> None:
    lines = [f"server {bind.host} {bind.port}", f"zone {bind.quarantine_zone}"]
    for n, ip in enumerate(ips, 1):
        lines.append(f"update delete {client_ip_owner(ip)}.{bind.quarantine_zone}")
        if n % 200 == 0:
            lines.append("send")
    lines.append("send")
    key = f"{bind.tsig_algorithm}:{bind.tsig_key_name}:{bind.tsig_secret}"
    subprocess.run(["nsupdate", "-y", key], input="\n".join(lines) + "\n", text=True, check=True)


async def run(
    devices: int, batch: int, kea: LabKea, bind: LabBind, desired_dsn: str, netns: str
) -> dict[str, object]:
    kea_pool = await asyncpg.create_pool(kea.dsn, min_size=1, max_size=4)
    pool = await db.create_pool(desired_dsn, max_size=4)
    try:
        await db.migrate(pool, db.package_migrations("provisioner"))
        rpz = RpzAdapter(
            bind.host,
            bind.port,
            key_name=bind.tsig_key_name,
            secret=bind.tsig_secret,
            algorithm=bind.tsig_algorithm,
            quarantine_zone=bind.quarantine_zone,
            allow_zone=bind.allow_zone,
            portal_name=bind.portal_name,
            timeout=120.0,
        )
        hosts = KeaHosts(kea_pool)
        desired = DesiredState(pool)
        # The garden's table and rules as the service installs them; the portal and resolver are
        # documentation addresses (no traffic flows in the bench, only the sets are measured).
        nft = NftGarden(
            NftConfig(portal=IPv4Address("192.0.2.80"), resolvers=(IPv4Address("192.0.2.53"),), netns=netns)
        )
        await nft.install()
        layers = [TimedLayer(KeaLayer(hosts)), TimedLayer(RpzLayer(rpz)), TimedLayer(NftLayer(nft))]
        garden = LayeredGarden(layers, desired)

        started = time.monotonic()
        for first in range(0, devices, batch):
            chunk = range(first, min(first + batch, devices))
            elements = [Element.mac(mac_of(i)) for i in chunk] + [Element.ip(ip_of(i)) for i in chunk]
            outcome = await garden.apply(elements, uuid.uuid4())
            if not outcome.complete:
                raise RuntimeError(f"batch at {first} not confirmed: {outcome.failed}")
        apply_seconds = time.monotonic() - started
        gardened = len(await hosts.quarantined_macs())
        in_zone = len(await rpz.quarantined_networks())
        in_filter = len((await nft.elements()).full)

        # The service reconciles at start and then on a schedule: time the start-up one (nothing to
        # repair) and, below, the next one with the drift.
        reconciler = Reconciler(garden, interval=3600)
        started = time.monotonic()
        startup = await reconciler.reconcile()
        reconcile_first_seconds = time.monotonic() - started
        if startup.failed or startup.repaired:
            raise RuntimeError(f"first reconcile: failed {startup.failed}, repaired {startup.repaired}")

        # 1% drift by hand: a third of the devices lose their Kea host row, a third their RPZ trigger,
        # a third their element in the nftables set.
        drift = max(3, devices // 100)
        step = devices // drift
        victims = [i * step for i in range(drift)]
        kea_victims, dns_victims, nft_victims = victims[0::3], victims[1::3], victims[2::3]
        await kea_pool.execute(
            "DELETE FROM hosts WHERE dhcp_identifier = ANY($1::bytea[])",
            [parse_mac(mac_of(i)) for i in kea_victims],
        )
        await asyncio.to_thread(nsupdate_delete, bind, [ip_of(i) for i in dns_victims])
        await asyncio.to_thread(nft_delete, netns, nft.config.table, [ip_of(i) for i in nft_victims])
        injected = {"dhcp": len(kea_victims), "dns": len(dns_victims), "nft": len(nft_victims)}

        started = time.monotonic()
        report = await reconciler.reconcile()
        reconcile_seconds = time.monotonic() - started
        if report.failed:
            raise RuntimeError(f"reconcile failed: {report.failed}")
        figures: dict[str, object] = {
            "apply_per_s": round(devices / apply_seconds, 1),
            "apply_seconds": round(apply_seconds, 1),
            "gardened": min(gardened, in_zone, in_filter),
            "reconcile_first_seconds": round(reconcile_first_seconds, 2),
            "reconcile_seconds": round(reconcile_seconds, 2),
            "drift_injected": len(victims),
            "drift_repaired": report.repaired,
        }
        for layer in layers:
            repaired = len(report.missing.get(layer.name, [])) + len(report.extra.get(layer.name, []))
            figures[f"apply_seconds_{layer.name}"] = round(layer.seconds, 1)
            figures[f"reconcile_seconds_{layer.name}"] = round(report.seconds[layer.name], 2)
            figures[f"drift_injected_{layer.name}"] = injected[layer.name]
            figures[f"drift_repaired_{layer.name}"] = repaired
        await nft.uninstall()
        await nft.close()
        return figures
    finally:
        await pool.close()
        await kea_pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    # Each layer's reconcile logs how its time was spent (INFO); the repairs themselves are WARNINGs.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    print(f"machine={platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"devices={args.devices}")
    print(f"batch={args.batch}")
    sys.stdout.flush()
    name = asyncio.run(create_database("bench_provisioner"))
    # The packet filter's own lab namespace: the host's rules are never touched.
    netns = f"lazaretto-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with LabKea(prefixlen=24) as kea, LabBind() as bind:
            figures = asyncio.run(run(args.devices, args.batch, kea, bind, database_dsn(name), netns))
        for key, value in figures.items():
            print(f"{key}={value}", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        asyncio.run(drop_soon(name))


async def drop_soon(name: str) -> None:
    # An autovacuum worker on the big tables (a superuser's process) may hold the database a moment.
    for _ in range(30):
        try:
            await drop_database(name)
            return
        except asyncpg.InsufficientPrivilegeError:
            await asyncio.sleep(2)
    await drop_database(name)


if __name__ == "__main__":
    main()
