"""The whole quarantine loop on real components: Suricata -> detector-snort -> policy -> provisioner
(Kea, BIND) and cmts-agent (snmpd lab CMTS) -> portal self-release -> everything undone."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest

from lazaretto_core.lab.dhcp_client import dhcp_exchange
from lazaretto_core.lab.suricata import portscan_rule, run_suricata, write_portscan_pcap
from lazaretto_core.lab.system import CpeHost, LabSystem
from lazaretto_core.testing import wait_until

pytestmark = pytest.mark.e2e

CM_MAC = "00:02:8a:d3:7c:6e"  # the modem the `cpe` fixture sits behind

REAL_WWW = "198.51.100.80"


def dig_from_other_client(system: LabSystem, name: str = "www.example.test") -> list[str]:
    assert system.bind is not None
    out = subprocess.run(
        [
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            "-b",
            "127.0.0.3",
            "@127.0.0.1",
            "-p",
            str(system.bind.port),
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def kea_host_classes(system: LabSystem, mac: str) -> str | None:
    assert system.kea is not None
    dsn = system.kea.dsn

    async def query() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            value: str | None = await conn.fetchval(
                "SELECT dhcp4_client_classes FROM hosts WHERE dhcp_identifier = $1 AND dhcp4_subnet_id = 0",
                bytes.fromhex(mac.replace(":", "")),
            )
            return value
        finally:
            await conn.close()

    return asyncio.run(query())


def test_a_scanning_cpe_is_quarantined_and_releases_itself(
    system: LabSystem, cpe: CpeHost, tmp_path: Path
) -> None:
    assert system.kea is not None
    assert system.cmts is not None
    # Given a subscriber PC with a real lease, listed by the CMTS behind its modem, resolving normally
    assert cpe.dig(system) == [REAL_WWW]
    # When Suricata sees it scanning and writes its EVE alerts where detector-snort tails them
    pcap = tmp_path / "scan.pcap"
    write_portscan_pcap(pcap, cpe.ip, REAL_WWW, range(20, 60), src_mac=cpe.mac)
    output = run_suricata(pcap, portscan_rule(), tmp_path / "suricata", home_net=f"[{system.kea.subnet}]")
    alerts = [line for line in output.eve.read_text().splitlines() if '"event_type":"alert"' in line]
    assert alerts, "suricata raised no alert"
    with system.eve_path.open("a") as eve:
        eve.write("\n".join(alerts) + "\n")

    # Then the lab CMTS records a reset SET for the subscriber's modem, by its MAC index
    first_reset = wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC))
    assert first_reset[0]["oid"].endswith(".1.3.6.1.4.1.9.9.116.1.3.1.1.8.0.2.138.211.124.110".lstrip("."))
    # and every name the CPE resolves is the portal, while another client gets the real answer
    wait_until("the garden DNS", lambda: cpe.dig(system)[-1:] == [system.portal_ip])
    assert dig_from_other_client(system) == [REAL_WWW]
    assert cpe.dig(system, "av.example.test") != [system.portal_ip]  # remediation stays reachable
    # and Kea now offers the CPE's MAC an address from the quarantine pool
    assert kea_host_classes(system, cpe.mac) == "quarantine"
    offer = dhcp_exchange(system.kea.client_netns, system.kea.client_iface, cpe.mac, mode="discover")
    assert offer.message_type == "OFFER"
    assert offer.ip is not None
    assert system.kea.quarantine_cidr.overlaps(ipaddress.ip_network(f"{offer.ip}/32"))
    assert offer.dns_servers == [system.kea.garden_resolver]
    case = wait_until(
        "the case to be quarantined",
        lambda: next((c for c in system.cases(cpe.ip) if c["state"] == "quarantined"), None),
    )
    assert case["cpe_mac"] == cpe.mac
    assert case["cm_mac"] == CM_MAC

    # When the subscriber opens the portal from the quarantined PC
    portal = f"http://{system.portal_ip}:{system.ports['portal']}/"
    page = cpe.fetch(portal)
    assert "A device in your home is scanning other computers" in page
    assert "I have installed antivirus software and believe the problem is fixed" in page
    token = re.search(r'name="form_token" value="([^"]+)"', page)
    assert token is not None
    # and ticks the box
    done = cpe.fetch(
        f"{portal}release", f"case_id={case['case_id']}", f"form_token={token.group(1)}", "attest=yes"
    )
    assert "being restored" in done

    # Then the case is released, the reservation and the RPZ trigger are gone, and the modem is reset again
    wait_until(
        "the release", lambda: next((c for c in system.cases(cpe.ip) if c["state"] == "released"), None)
    )
    assert kea_host_classes(system, cpe.mac) is None
    wait_until("normal DNS again", lambda: cpe.dig(system) == [REAL_WWW])
    assert len(system.resets_for(CM_MAC)) == 2
    offer = dhcp_exchange(system.kea.client_netns, system.kea.client_iface, cpe.mac, mode="discover")
    assert offer.ip is not None
    assert not system.kea.quarantine_cidr.overlaps(ipaddress.ip_network(f"{offer.ip}/32"))


def test_a_static_address_is_attributed_through_the_cmts_cpe_table(system: LabSystem) -> None:
    # Given a PC with a static address (no DHCP lease) that the CMTS lists behind the modem
    assert system.cmts is not None
    system.cmts.add_cpe(CM_MAC, "02:00:00:00:00:99", "100.64.0.77")
    # (cmts-agent walks the CMTS on a miss, at most every LAZARETTO_INVENTORY_MIN_INTERVAL seconds)
    wait_until(
        "cmts-agent to see the new CPE",
        lambda: (
            httpx.get(
                f"{system.url('cmts_agent')}/v1/ips/100.64.0.77/modem",
                headers=system.admin_headers(),
                timeout=10,
            ).status_code
            == 200
        ),
    )
    # When an operator quarantines the address
    response = httpx.post(
        f"{system.url('policy')}/v1/quarantine",
        json={"ip": "100.64.0.77", "reason": "abuse@ complaint", "category": "malware"},
        headers=system.admin_headers(),
        timeout=30,
    )
    # Then policy found the PC and its modem in the CMTS's CPE table
    assert response.status_code == 201, response.text
    case = response.json()
    assert (case["cpe_mac"], case["cm_mac"]) == ("02:00:00:00:00:99", CM_MAC)
    wait_until("the quarantine reset", lambda: system.resets_for(CM_MAC))
