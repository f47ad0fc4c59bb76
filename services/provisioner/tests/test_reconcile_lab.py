"""Desired state and reconcile on real layers: Kea's host database, BIND's RPZ zone, ISC dhcpd over OMAPI.

Drift is injected the way an operator's mistake would make it: a host row deleted with SQL, an RPZ
record removed or added with `nsupdate`, a dhcpd class member removed or added with `omshell`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import uuid
from collections.abc import AsyncIterator, Collection, Sequence

import asyncpg
import pytest
from prometheus_client import REGISTRY

from lazaretto_lab.bind import LabBind
from lazaretto_lab.dhcp_client import dhcp_exchange
from lazaretto_lab.dhcpd import LabDhcpd
from provisioner.desired import DesiredState, LayeredGarden
from provisioner.dhcpd import DhcpdHosts
from provisioner.kea import KeaHosts, parse_mac
from provisioner.layers import DhcpdLayer, Element, KeaLayer, RpzLayer
from provisioner.reconcile import Reconciler
from provisioner.rpz import RpzAdapter, client_ip_owner


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])


def new_ip() -> str:
    return str(ipaddress.IPv4Address("10.200.0.0") + uuid.uuid4().int % 65000 + 1)


def drift_count(layer: str, kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "lazaretto_provisioner_drift_repaired_total", {"layer": layer, "kind": kind}
    )
    return value or 0.0


def nsupdate(bind: LabBind, *commands: str) -> None:
    script = "\n".join(
        [f"server {bind.host} {bind.port}", f"zone {bind.quarantine_zone}", *commands, "send", ""]
    )
    key = f"{bind.tsig_algorithm}:{bind.tsig_key_name}:{bind.tsig_secret}"
    subprocess.run(["nsupdate", "-y", key], input=script, text=True, check=True, capture_output=True)


def omshell(dhcpd: LabDhcpd, mac: str, action: str) -> None:
    """Add (`create`) or remove (`remove`) a quarantine class member, as an operator would by hand."""
    lines = [
        f"server {dhcpd.omapi_host}",
        f"port {dhcpd.omapi_port}",
        f"key {dhcpd.omapi_key_name} {dhcpd.omapi_secret}",
        "connect",
        "new subclass",
        'set name = "quarantine"',
        f"set hashstring = 01:{mac}",
        "create" if action == "create" else "open",
    ]
    if action == "remove":
        lines.append("remove")
    out = subprocess.run(
        ["omshell"], input="\n".join(lines) + "\n", text=True, capture_output=True, check=True
    )
    assert "can't" not in out.stdout, out.stdout
    assert "not found" not in out.stdout, out.stdout


@pytest.fixture
def desired(provisioner_pool: asyncpg.Pool[asyncpg.Record]) -> DesiredState:
    return DesiredState(provisioner_pool)


@pytest.fixture
async def dhcpd_hosts(lab_dhcpd: LabDhcpd) -> AsyncIterator[DhcpdHosts]:
    hosts = DhcpdHosts(
        lab_dhcpd.omapi_host,
        lab_dhcpd.omapi_port,
        key_name=lab_dhcpd.omapi_key_name,
        secret=lab_dhcpd.omapi_secret,
        algorithm=lab_dhcpd.omapi_algorithm,
    )
    yield hosts
    await hosts.close()


async def test_drift_in_kea_and_rpz_is_repaired_and_counted(
    desired: DesiredState,
    kea_hosts: KeaHosts,
    kea_pool: asyncpg.Pool[asyncpg.Record],
    rpz: RpzAdapter,
    lab_bind: LabBind,
) -> None:
    garden = LayeredGarden([KeaLayer(kea_hosts), RpzLayer(rpz)], desired)
    reconciler = Reconciler(garden, interval=3600)
    await reconciler.reconcile()  # start from the desired state (other tests share the servers)
    mac, ip, stray = new_mac(), new_ip(), new_ip()
    case = uuid.uuid4()

    # given a garden applied and confirmed in both layers
    outcome = await garden.apply([Element.mac(mac), Element.ip(ip)], case)
    assert outcome.complete
    assert await desired.unconfirmed_layers(case) == []
    assert await kea_hosts.is_quarantined(mac)
    assert await rpz.is_quarantined(ip)
    before = {
        (layer, kind): drift_count(layer, kind) for layer in ("dhcp", "dns") for kind in ("missing", "extra")
    }

    # when someone deletes the host row, removes the RPZ trigger and adds one nobody asked for
    await kea_pool.execute("DELETE FROM hosts WHERE dhcp_identifier = $1", parse_mac(mac))
    owner = f"{client_ip_owner(ip)}.{lab_bind.quarantine_zone}"
    nsupdate(
        lab_bind,
        f"update delete {owner}",
        f"update add {client_ip_owner(stray)}.{lab_bind.quarantine_zone} 60 CNAME {lab_bind.portal_name}.",
    )
    assert not await kea_hosts.is_quarantined(mac)
    assert not await rpz.is_quarantined(ip)
    assert await rpz.is_quarantined(stray)

    # then the next reconcile repairs each one, and counts it by layer and kind
    report = await reconciler.reconcile()
    assert report.missing == {"dhcp": [Element.mac(mac)], "dns": [Element.ip(ip)]}
    assert report.extra == {"dns": [Element.ip(stray)]}
    assert report.failed == {}
    assert await kea_hosts.is_quarantined(mac)
    assert await rpz.is_quarantined(ip)
    assert not await rpz.is_quarantined(stray)
    assert drift_count("dhcp", "missing") == before["dhcp", "missing"] + 1
    assert drift_count("dns", "missing") == before["dns", "missing"] + 1
    assert drift_count("dns", "extra") == before["dns", "extra"] + 1
    assert drift_count("dhcp", "extra") == before["dhcp", "extra"]
    # and a second reconcile finds nothing
    assert (await reconciler.reconcile()).repaired == 0


async def test_drift_in_dhcpd_is_repaired_and_the_device_is_offered_the_quarantine_pool(
    desired: DesiredState, dhcpd_hosts: DhcpdHosts, lab_dhcpd: LabDhcpd
) -> None:
    garden = LayeredGarden([DhcpdLayer(dhcpd_hosts)], desired)
    reconciler = Reconciler(garden, interval=3600)
    kept, released = new_mac(), new_mac()
    assert (await garden.apply([Element.mac(kept), Element.mac(released)], uuid.uuid4())).complete
    assert (await garden.remove([Element.mac(released)], None)).complete
    assert await dhcpd_hosts.quarantined_among([kept, released]) == {kept}
    before = drift_count("dhcp", "missing"), drift_count("dhcp", "extra")

    # when an operator takes the gardened device out of the class and puts the released one back
    await asyncio.to_thread(omshell, lab_dhcpd, kept, "remove")
    await asyncio.to_thread(omshell, lab_dhcpd, released, "create")
    assert await dhcpd_hosts.quarantined_among([kept, released]) == {released}

    # then reconcile (OMAPI look-ups of what the desired state knows) puts both back in line
    report = await reconciler.reconcile()
    assert report.missing == {"dhcp": [Element.mac(kept)]}
    assert report.extra == {"dhcp": [Element.mac(released)]}
    assert (drift_count("dhcp", "missing"), drift_count("dhcp", "extra")) == (before[0] + 1, before[1] + 1)
    assert await dhcpd_hosts.quarantined_among([kept, released]) == {kept}
    offer = await asyncio.to_thread(
        dhcp_exchange, lab_dhcpd.client_netns, lab_dhcpd.client_iface, kept, "discover", 15.0
    )
    assert ipaddress.IPv4Address(offer.ip) in lab_dhcpd.quarantine_cidr, offer


async def test_a_layer_that_is_down_is_retried_without_blocking_the_others(
    desired: DesiredState, dhcpd_hosts: DhcpdHosts, lab_dhcpd: LabDhcpd, rpz: RpzAdapter
) -> None:
    down = DhcpdHosts(
        "127.0.0.1", 9, key_name="k", secret=lab_dhcpd.omapi_secret, algorithm="hmac-md5", timeout=1.0
    )
    mac, ip, case = new_mac(), new_ip(), uuid.uuid4()

    # when the DHCP layer is down during the apply
    outcome = await LayeredGarden([DhcpdLayer(down), RpzLayer(rpz)], desired).apply(
        [Element.mac(mac), Element.ip(ip)], case
    )
    # then DNS is applied and confirmed anyway, DHCP is not, and the case is not complete
    assert outcome.confirmed == ["dns"]
    assert set(outcome.failed) == {"dhcp"}
    assert outcome.transient
    assert await rpz.is_quarantined(ip)
    assert await desired.unconfirmed_layers(case) == ["dhcp"]

    # when the layer is back, the next reconcile applies what it missed and confirms it
    report = await Reconciler(LayeredGarden([DhcpdLayer(dhcpd_hosts)], desired), 3600).reconcile()
    assert report.missing == {"dhcp": [Element.mac(mac)]}
    assert await dhcpd_hosts.is_quarantined(mac)
    assert await desired.unconfirmed_layers(case) == []


class MeetingLayer:
    """A real layer that, before pushing, waits until every layer of the change has begun its push:
    a change that pushes its layers one after another never gets past the first."""

    def __init__(
        self, inner: KeaLayer | RpzLayer, arrived: list[str], everyone: asyncio.Event, n: int
    ) -> None:
        self.inner, self.arrived, self.everyone, self.n = inner, arrived, everyone, n
        self.name, self.kinds = inner.name, inner.kinds

    def handles(self, element: Element) -> bool:
        return self.inner.handles(element)

    async def apply_many(self, elements: Sequence[Element]) -> None:
        self.arrived.append(self.name)
        if len(self.arrived) == self.n:
            self.everyone.set()
        await self.everyone.wait()
        await self.inner.apply_many(elements)

    async def remove_many(self, elements: Sequence[Element]) -> None:
        await self.inner.remove_many(elements)

    async def list_elements(self, known: Collection[Element]) -> set[Element]:
        return await self.inner.list_elements(known)


async def test_the_layers_of_a_change_are_pushed_concurrently(
    desired: DesiredState, kea_hosts: KeaHosts, rpz: RpzAdapter
) -> None:
    arrived: list[str] = []
    everyone = asyncio.Event()
    layers = [
        MeetingLayer(KeaLayer(kea_hosts), arrived, everyone, 2),
        MeetingLayer(RpzLayer(rpz), arrived, everyone, 2),
    ]
    mac, ip, case = new_mac(), new_ip(), uuid.uuid4()

    # when a device is gardened in Kea and in BIND (the timeout only keeps a sequential push from hanging)
    outcome = await asyncio.wait_for(
        LayeredGarden(layers, desired).apply([Element.mac(mac), Element.ip(ip)], case), timeout=60
    )

    # then both pushes had begun before either went on, and both layers hold and confirmed it
    assert sorted(arrived) == ["dhcp", "dns"]
    assert outcome.complete
    assert outcome.confirmed == ["dhcp", "dns"]
    assert await kea_hosts.is_quarantined(mac)
    assert await rpz.is_quarantined(ip)
    assert await desired.unconfirmed_layers(case) == []
    assert await desired.case_elements(case) == {Element.mac(mac), Element.ip(ip)}


async def test_a_storm_is_applied_in_batched_zone_updates(desired: DesiredState, rpz: RpzAdapter) -> None:
    sent: list[int] = []
    send = rpz._send

    async def counting_send(message, operation, zone):  # type: ignore[no-untyped-def]
        sent.append(len(message.update))
        await send(message, operation, zone)

    rpz._send = counting_send  # type: ignore[method-assign]
    base = ipaddress.IPv4Address("10.250.0.0")
    elements = [Element.ip(str(base + i)) for i in range(1000)]

    # when 1,000 addresses are gardened at once
    assert (await LayeredGarden([RpzLayer(rpz)], desired).apply(elements, uuid.uuid4())).complete

    # then BIND got 4 UPDATE messages of 250 triggers each, and the zone holds every one
    assert len(sent) == 4
    held = await rpz.quarantined_networks()
    assert {ipaddress.ip_network(e.value) for e in elements} <= held
    await rpz.release_clients([e.value for e in elements])


async def test_the_first_start_adopts_what_the_layers_hold_instead_of_releasing_it(
    desired: DesiredState, kea_hosts: KeaHosts, rpz: RpzAdapter
) -> None:
    # given quarantines made before the provisioner kept a desired state (an upgrade)
    mac, ip = new_mac(), new_ip()
    await kea_hosts.quarantine_host(mac, {"case_id": "old"})
    await rpz.quarantine_client(ip)
    reconciler = Reconciler(LayeredGarden([KeaLayer(kea_hosts), RpzLayer(rpz)], desired), 3600)

    # when it starts for the first time
    await reconciler.start()
    await reconciler.stop()

    # then both stay, now desired and confirmed; and the next reconcile finds nothing to repair
    assert await kea_hosts.is_quarantined(mac)
    assert await rpz.is_quarantined(ip)
    assert Element.mac(mac) in await desired.elements("dhcp", present=True)
    assert Element.ip(ip) in await desired.elements("dns", present=True)
    assert (await reconciler.reconcile()).repaired == 0
    # and a later start adopts nothing more
    assert await reconciler.adopt_if_new() == {}
