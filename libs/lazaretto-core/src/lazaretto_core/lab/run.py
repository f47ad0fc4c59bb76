"""`make run`: the whole system on loopback with lab peers, until Ctrl-C.

python -m lazaretto_core.lab.run [--workdir run]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from .snmpd import LabModem
from .system import LabSystem, SystemConfig

DEFAULT_PORTS = {
    "detector_snort": 8100,
    "detector_smtp": 8200,
    "provisioner": 8300,
    "policy": 8400,
    "cmts_agent": 8500,
    "portal": 8080,
}
DEMO_MODEMS = [LabModem("00:02:8a:d3:7c:6e", "10.1.0.10"), LabModem("00:11:22:33:44:55", "10.1.0.11")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("run"))
    args = parser.parse_args()
    user = os.environ.get("LAZARETTO_AMQP_USER", "lazaretto")
    password = os.environ.get("LAZARETTO_AMQP_PASSWORD", "lazaretto")
    db_password = os.environ.get("LAZARETTO_DB_PASSWORD", "lazaretto")
    config = SystemConfig(
        workdir=args.workdir.resolve(),
        amqp_url=f"amqp://{user}:{password}@127.0.0.1:5672/",
        database_url=f"postgresql://lazaretto:{db_password}@127.0.0.1:5432/lazaretto",
        modems=DEMO_MODEMS,
        ports=DEFAULT_PORTS,
        smtp_policy_port=10040,
        portal_on_subscriber_side=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("starting Lazaretto (lab BIND, Kea, CMTS and the six services)...", flush=True)
    with LabSystem(config) as system:
        assert system.bind is not None
        assert system.cmts is not None
        assert system.kea is not None
        token_file = config.workdir / "admin-token"
        token_file.write_text(system.admin_token + "\n")
        token_file.chmod(0o600)
        print(
            "\nLazaretto is up; every /readyz is green.\n"
            f"  portal        {system.url('portal')}/\n"
            f"  admin API     {system.url('policy')}/docs   (bearer token in {token_file})\n"
            f"  cmts-agent    {system.url('cmts_agent')}/docs\n"
            f"  provisioner   {system.url('provisioner')}/docs\n"
            f"  IDS input     append Suricata EVE lines to {system.eve_path}\n"
            f"  SMTP policy   check_policy_service inet:127.0.0.1:{system.smtp_policy_port}\n"
            f"  lab DNS       dig @127.0.0.1 -p {system.bind.port} www.example.test\n"
            f"  lab CMTS      snmpwalk -v2c -c public 127.0.0.1:{system.cmts.port} 1.3.6.1.2.1.10.127\n"
            f"  subscribers   {system.kea.subnet}: Kea on {system.kea.server_iface}, PCs in netns "
            f"{system.kea.client_netns}; their DNS {system.kea.normal_resolver} (normal pool) and "
            f"{system.kea.garden_resolver} (quarantine pool {system.kea.quarantine_cidr}), port 53; portal "
            f"{system.portal_public_url}\n"
            f"  logs          {config.workdir / 'logs'}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        stop.wait()
        print("stopping...", flush=True)


if __name__ == "__main__":
    main()
