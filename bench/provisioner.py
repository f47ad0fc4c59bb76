"""make bench-provisioner: gardening a storm of devices in the DHCP and DNS layers, then reconciling.

Real Kea's PostgreSQL host database (a lab Kea's, `kea-admin db-init`), a real BIND with the RPZ zones,
and provisioner's desired state in a fresh PostgreSQL database. `--devices` devices (default 100,000)
are gardened through `LayeredGarden` in batches of `--batch` (each device: a MAC in Kea, an address in
the RPZ zone), confirmed in every layer. Then 1% drift is injected by hand (half: Kea host rows deleted
with SQL; half: RPZ triggers deleted with `nsupdate`), and one full reconcile runs and repairs it.
Before the drift, one reconcile runs as the service's start-up one does (it finds nothing to repair).
Prints one `name=value` per line (settings first): apply_per_s (devices confirmed in every layer per
second, sustained over the whole storm), gardened, reconcile_first_seconds (the start-up reconcile),
reconcile_seconds (the next one, with the drift: every layer listed in full — Kea's host rows, the RPZ
zone by AXFR — compared with the desired state and repaired), drift_injected, drift_repaired.
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

import asyncpg

from lazaretto_core import db
from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.testing import create_database, database_dsn, drop_database
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.kea import KeaHosts, parse_mac
from provisioner.layers import Element, KeaLayer, RpzLayer
from provisioner.reconcile import Reconciler
from provisioner.rpz import RpzAdapter, client_ip_owner

BASE_IP = ipaddress.IPv4Address("10.0.0.0")


def mac_of(i: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


def ip_of(i: int) -> str:
    return str(BASE_IP + i + 1)


def nsupdate_delete(bind: LabBind, ips: list[str]) -> None:
    lines = [f"server {bind.host} {bind.port}", f"zone {bind.quarantine_zone}"]
    for n, ip in enumerate(ips, 1):
        lines.append(f"update delete {client_ip_owner(ip)}.{bind.quarantine_zone}")
        if n % 200 == 0:
            lines.append("send")
    lines.append("send")
    key = f"{bind.tsig_algorithm}:{bind.tsig_key_name}:{bind.tsig_secret}"
    subprocess.run(["nsupdate", "-y", key], input="\n".join(lines) + "\n", text=True, check=True)


async def run(devices: int, batch: int, kea: LabKea, bind: LabBind, desired_dsn: str) -> dict[str, object]:
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
        garden = LayeredGarden([KeaLayer(hosts), RpzLayer(rpz)], desired)

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

        # The service reconciles at start and then on a schedule: time the start-up one (nothing to
        # repair) and, below, the next one with the drift.
        reconciler = Reconciler(garden, interval=3600)
        started = time.monotonic()
        startup = await reconciler.reconcile()
        reconcile_first_seconds = time.monotonic() - started
        if startup.failed or startup.repaired:
            raise RuntimeError(f"first reconcile: failed {startup.failed}, repaired {startup.repaired}")

        # 1% drift by hand: half the devices lose their Kea host row, the other half their RPZ trigger.
        drift = max(2, devices // 100)
        step = devices // drift
        victims = [i * step for i in range(drift)]
        kea_victims, dns_victims = victims[0::2], victims[1::2]
        await kea_pool.execute(
            "DELETE FROM hosts WHERE dhcp_identifier = ANY($1::bytea[])",
            [parse_mac(mac_of(i)) for i in kea_victims],
        )
        await asyncio.to_thread(nsupdate_delete, bind, [ip_of(i) for i in dns_victims])

        started = time.monotonic()
        report = await reconciler.reconcile()
        reconcile_seconds = time.monotonic() - started
        if report.failed:
            raise RuntimeError(f"reconcile failed: {report.failed}")
        return {
            "apply_per_s": round(devices / apply_seconds, 1),
            "apply_seconds": round(apply_seconds, 1),
            "gardened": min(gardened, in_zone),
            "reconcile_first_seconds": round(reconcile_first_seconds, 2),
            "reconcile_seconds": round(reconcile_seconds, 2),
            "drift_injected": len(victims),
            "drift_repaired": report.repaired,
        }
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
    try:
        with LabKea(prefixlen=24) as kea, LabBind() as bind:
            figures = asyncio.run(run(args.devices, args.batch, kea, bind, database_dsn(name)))
        for key, value in figures.items():
            print(f"{key}={value}", flush=True)
    finally:
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
