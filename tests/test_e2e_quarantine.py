"""The whole quarantine loop on real components, with a PC that behaves like a real one: Suricata ->
detector-snort -> policy -> provisioner (Kea, BIND) and cmts-agent (snmpd lab CMTS) -> the PC renews into
the quarantine pool -> portal self-release -> the PC renews back into the normal pool."""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from lazaretto_lab.suricata import portscan_rule, run_suricata, write_sweep_pcap
from lazaretto_lab.system import CpeHost, LabSystem, lease_cpe
from lazaretto_lab.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"  # the modem the `cpe` fixture sits behind
REAL_WWW = "198.51.100.80"
REAL_MAIL = "198.51.100.25"
REAL_AV = "198.51.100.81"  # av.example.test: a remediation site, allow-listed in the garden
CHECKBOX = "I have installed antivirus software and believe the problem is fixed"


def in_quarantine_pool(system: LabSystem, ip: str) -> bool:
    assert system.kea is not None
    return ipaddress.IPv4Address(ip) in system.kea.quarantine_cidr


def suricata_alerts(system: LabSystem, src_ip: str, src_mac: str, workdir: Path) -> list[str]:
    """Real Suricata reading a sweep from `src_ip` (25 hosts: policy's default scan rule wants 20
    distinct destinations, one alert is never enough): the EVE alert lines it writes."""
    assert system.kea is not None
    pcap = workdir / "scan.pcap"
    # The scan happens now, after the PC got its address: packet (and so alert) times are the current time.
    hosts = [f"198.51.100.{n}" for n in range(100, 125)]
    write_sweep_pcap(pcap, src_ip, hosts, 445, start=time.time())
    output = run_suricata(pcap, portscan_rule(), workdir / "suricata", home_net=f"[{system.kea.subnet}]")
    alerts = [line for line in output.eve.read_text().splitlines() if '"event_type":"alert"' in line]
    assert alerts, "suricata raised no alert"
    return alerts


def deliver(system: LabSystem, alerts: list[str]) -> None:
    """Append alert lines where detector-snort tails them."""
    with system.eve_path.open("a") as eve:
        eve.write("\n".join(alerts) + "\n")


def case_in_state(system: LabSystem, ip: str, state: str) -> dict[str, Any]:
    return wait_until(
        f"a case for {ip} in state {state}",
        lambda: next((c for c in system.cases(ip) if c["state"] == state), None),
        timeout=90,
    )


def portal_url(system: LabSystem) -> str:
    """The portal as a subscriber reaches it: by name, resolved by the DNS server of their lease."""
    return system.portal_public_url


def form_token(page: str) -> str:
    match = re.search(r'name="form_token" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


def tick_and_follow(host: CpeHost, system: LabSystem, case_id: str, page: str) -> str:
    """Tick the box as a browser does (POST, then follow the 303 to the progress page), then reload the
    progress page as its Refresh header does until it says the connection is restored; its text."""
    sent = host.http(
        f"{portal_url(system)}release",
        form=(f"case_id={case_id}", f"form_token={form_token(page)}", "attest=yes"),
    )
    assert sent.status == 303, sent
    progress = urljoin(portal_url(system), sent.headers["location"])
    assert "/progress?case=" in progress, progress

    def restored() -> str | None:
        try:
            text = host.fetch(progress)
        except Exception:  # the modem restarts: the PC is briefly offline, as the page warns
            return None
        assert "could not be restored" not in text, text
        return text if "Your connection is restored" in text else None

    return wait_until("the progress page to say done", restored, timeout=90, interval=1.0)


def gardened(system: LabSystem, ip: str) -> bool:
    response = httpx.get(
        f"{system.url('provisioner')}/v1/garden/{ip}", headers=system.admin_headers(), timeout=10
    )
    response.raise_for_status()
    return bool(response.json()["dns_quarantined"])


def test_a_scanning_pc_moves_into_the_quarantine_pool_and_releases_itself(
    system: LabSystem, cpe: CpeHost, tmp_path: Path
) -> None:
    assert system.kea is not None
    # Given a subscriber PC with a lease from Kea in the normal pool, resolving with its lease's DNS
    first_ip = cpe.ip
    assert not in_quarantine_pool(system, first_ip)
    assert cpe.dns_server == system.kea.normal_resolver
    assert cpe.dig() == [REAL_WWW]

    # When Suricata sees it scanning
    deliver(system, suricata_alerts(system, cpe.ip, cpe.mac, tmp_path))
    # Then the lab CMTS records a reset SET for its modem, by its MAC index
    first_reset = wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC))
    assert first_reset[0]["oid"].endswith("1.3.6.1.4.1.9.9.116.1.3.1.1.8.0.2.138.211.124.110")

    # When the PC renews after the reset, as a real one does (NAK, then DISCOVER again)
    moved = cpe.renew()
    # Then it takes an address in the quarantine pool, whose DNS server is the garden resolver
    quarantine_ip = cpe.ip
    assert in_quarantine_pool(system, quarantine_ip), cpe
    assert cpe.dns_server == system.kea.garden_resolver
    assert moved.captive_portal == system.kea.portal_url
    # and that resolver answers the portal for every name but the allow-listed ones
    assert cpe.resolve("www.example.test") == system.portal_ip
    assert cpe.resolve("mail.example.test") == system.portal_ip
    assert cpe.resolve("no-such-host.example.test") == system.portal_ip
    assert cpe.resolve("av.example.test") == REAL_AV
    assert system.bind is not None
    assert cpe.resolve(system.bind.portal_name) == system.portal_ip
    # and the address it left is no longer gardened (its next holder would be free)
    wait_until("the old address un-gardened", lambda: not gardened(system, first_ip))
    case = case_in_state(system, first_ip, "quarantined")
    assert (case["cpe_mac"], case["cm_mac"]) == (cpe.mac, CM_MAC)

    # When the person opens the portal from the quarantine-pool address
    page = cpe.fetch(portal_url(system))
    # Then they see their own case, and the checkbox
    assert "A device in your home is scanning other computers" in page
    assert case["reference"] in page
    assert CHECKBOX in page
    # When they tick it, the progress page follows the case until it is released
    tick_and_follow(cpe, system, case["case_id"], page)
    # Then the case is released and the modem is reset again
    case_in_state(system, first_ip, "released")
    wait_until("the release reset", lambda: len(system.resets_for(CM_MAC)) == 2)
    # When the PC renews after that reset, it lands in the normal pool and resolves normally
    normal = cpe.renew()
    assert not in_quarantine_pool(system, cpe.ip), cpe
    assert cpe.dns_server == system.kea.normal_resolver
    assert normal.captive_portal is None
    wait_until("normal DNS again", lambda: cpe.dig() == [REAL_WWW])
    assert cpe.resolve("mail.example.test") == REAL_MAIL
    # and an operator finds the case by every address the PC held during it
    for ip in (first_ip, quarantine_ip):
        assert [c["case_id"] for c in system.cases(ip)] == [case["case_id"]], ip
    # and every service did its part as its own broker user (the lab made one per service for this run)
    for name in system.processes:
        user = system.bus_users.user(name.replace("_", "-"))
        assert f"bus login '{user}'" in (system.workdir / "logs" / f"{name}.log").read_text(), name


def test_the_next_holder_of_a_gardened_address_is_not_gardened(system: LabSystem, cpe: CpeHost) -> None:
    assert system.kea is not None
    old_ip = cpe.ip
    # Given the PC was quarantined by an operator, and moved into the quarantine pool at the reset
    response = httpx.post(
        f"{system.url('policy')}/v1/quarantine",
        json={"ip": old_ip, "reason": "abuse@ complaint", "category": "malware"},
        headers=system.admin_headers(),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    case = response.json()
    wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC))
    cpe.renew()
    assert in_quarantine_pool(system, cpe.ip)
    # When Kea gives its old address to another device (released by Kea, leased to another MAC)
    reply = system.kea.command("lease4-del", {"ip-address": old_ip})
    assert reply["result"] in (0, 3), reply  # 3: Kea already dropped it when the PC moved
    neighbour = CpeHost(system, "02:00:00:00:00:02")
    neighbour.dhcp(requested_ip=old_ip)
    assert neighbour.ip == old_ip
    # Then that device resolves normally, and its portal page shows no one's case
    wait_until("the neighbour not gardened", lambda: neighbour.dig() == [REAL_WWW])
    page = neighbour.fetch(portal_url(system))
    assert "not restricted" in page
    assert case["case_id"] not in page
    assert CHECKBOX not in page
    # and it cannot release the first device's case, even with that device's own form (offered to the
    # owner once the quarantine is in place: its modem back online)
    owners_page = wait_until(
        "the owner's page to offer the release form",
        lambda: page if 'name="form_token"' in (page := cpe.fetch(portal_url(system))) else None,
        timeout=60,
        interval=0.5,
    )
    assert case["reference"] in owners_page
    refused = neighbour.fetch(
        f"{portal_url(system)}release",
        f"case_id={case['case_id']}",
        f"form_token={form_token(owners_page)}",
        "attest=yes",
    )
    assert "being restored" not in refused
    (still,) = [c for c in system.cases(old_ip) if c["case_id"] == case["case_id"]]
    assert still["state"] == "quarantined"
    assert len(system.resets_for(CM_MAC)) == 1


def test_an_alert_is_attributed_to_who_held_the_address_at_alert_time(
    system: LabSystem, tmp_path: Path
) -> None:
    assert system.kea is not None
    assert system.cmts is not None
    # Given PC A scanning from its address X; Suricata writes the alert at that moment
    scanner = lease_cpe(system, "02:00:00:00:00:0a", CM_MAC)
    x = scanner.ip
    alerts = suricata_alerts(system, x, scanner.mac, tmp_path)
    # and before the alert is handled, A gives X back and PC B gets it
    scanner.release()
    wait_until("Kea to drop A's lease", lambda: system.kea is not None and _lease_gone(system, x))
    bystander = CpeHost(system, "02:00:00:00:00:0b")
    bystander.dhcp(requested_ip=x)
    assert bystander.ip == x
    system.cmts.add_cpe(CM_MAC, bystander.mac, x)
    scanner.dhcp()  # A comes back with another address
    assert scanner.ip != x
    # When the (delayed) alert reaches detector-snort
    deliver(system, alerts)
    # Then the case belongs to A, the holder of X at alert time, not to B
    case = case_in_state(system, x, "quarantined")
    assert case["cpe_mac"] == scanner.mac
    # and A is gardened at its current address, while B keeps its normal answers on X
    wait_until("A gardened", lambda: scanner.dig()[-1:] == [system.portal_ip])
    assert bystander.dig() == [REAL_WWW]
    assert "not restricted" in bystander.fetch(portal_url(system))


def test_a_static_pc_known_only_to_the_cmts_is_quarantined_and_releases_itself(system: LabSystem) -> None:
    assert system.kea is not None
    assert system.cmts is not None
    # Given a PC with a static address (no DHCP) using the ISP's resolver, listed by the CMTS behind its modem
    pc = CpeHost(system, "02:00:00:00:00:99")
    static_ip = str(system.kea.subnet[170])
    pc.configure_static(static_ip, system.kea.normal_resolver)
    system.cmts.add_cpe(CM_MAC, pc.mac, static_ip)
    assert pc.dig() == [REAL_WWW]
    wait_until(
        "cmts-agent to see the static PC",
        lambda: (
            httpx.get(
                f"{system.url('cmts_agent')}/v1/ips/{static_ip}/modem",
                headers=system.admin_headers(),
                timeout=10,
            ).status_code
            == 200
        ),
    )
    # When an operator quarantines its address
    response = httpx.post(
        f"{system.url('policy')}/v1/quarantine",
        json={"ip": static_ip, "reason": "abuse@ complaint", "category": "malware"},
        headers=system.admin_headers(),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    case = response.json()
    # Then policy found the PC and its modem in the CMTS's CPE table
    assert (case["cpe_mac"], case["cm_mac"]) == (pc.mac, CM_MAC)
    case_in_state(system, static_ip, "quarantined")
    # and the PC, which keeps its address, sees the portal for every name but the allow-listed ones
    wait_until("the garden DNS", lambda: pc.resolve("www.example.test") == system.portal_ip)
    assert pc.resolve("av.example.test") == REAL_AV

    # When it opens the portal, it sees its case and can release it
    # (while policy cannot yet tell who holds the address, the page says "try again in a minute": they do)
    def case_page() -> str | None:
        text = pc.fetch(portal_url(system))
        return text if case["reference"] in text else None

    page = wait_until("the portal page to show the case", case_page, timeout=30, interval=1.0)
    assert CHECKBOX in page
    tick_and_follow(pc, system, case["case_id"], page)
    case_in_state(system, static_ip, "released")
    wait_until("normal DNS again", lambda: pc.dig() == [REAL_WWW])


def _lease_gone(system: LabSystem, ip: str) -> bool:
    assert system.kea is not None
    reply = system.kea.command("lease4-get", {"ip-address": ip})
    return isinstance(reply, dict) and reply.get("result") == 3  # 3: empty (no such lease)
