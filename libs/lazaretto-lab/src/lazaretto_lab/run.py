"""`make run`: the whole system on loopback with lab peers, until Ctrl-C, SIGTERM or the terminal closing.

python -m lazaretto_lab.run [--workdir run] [--free-ports] [--amqp-url URL] [--database-url URL]

It also brings a lab subscriber household (`lazaretto_lab.household`: a PC with a real lease behind the
first demo modem, and the subscriber-view proxy) and ends by printing what to do next with it.

Ctrl-C stops everything this started: the six services, BIND, the lab CMTS (snmpd and its emulator),
kea-dhcp4 with its veth pair, network namespace and database, the household's DHCP client and proxy.
RabbitMQ and PostgreSQL are not started here (deploy/bin/start-peers, shared with `make test`) and keep
running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

from .databases import STATEFUL
from .household import LabHousehold
from .signals import unwind_on_stop_signals
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
# The lab household: a PC behind the first demo modem (a locally administered MAC).
HOUSEHOLD_PC_MAC = "02:1a:b0:00:00:01"
PROXY_PORT = 8888


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("run"))
    parser.add_argument("--free-ports", action="store_true", help="any free ports instead of 8080, 8100-8500")
    parser.add_argument("--amqp-url", help="broker (default: the one deploy/bin/start-peers set up)")
    parser.add_argument(
        "--database-url",
        help="an admin connection (CREATEDB, CREATEROLE): this run makes policy's, cmts-agent's and "
        "provisioner's own databases and roles there and drops them at the end (default: start-peers' "
        "lazaretto_policy, lazaretto_cmts and lazaretto_provisioner, which stay)",
    )
    args = parser.parse_args()
    user = os.environ.get("LAZARETTO_AMQP_USER", "lazaretto")
    password = os.environ.get("LAZARETTO_AMQP_PASSWORD", "lazaretto")
    db_password = os.environ.get("LAZARETTO_DB_PASSWORD", "lazaretto")
    proxy_port = 0 if args.free_ports else PROXY_PORT
    config = SystemConfig(
        workdir=args.workdir.resolve(),
        amqp_url=args.amqp_url or f"amqp://{user}:{password}@127.0.0.1:5672/",
        database_url=args.database_url or f"postgresql://lazaretto:{db_password}@127.0.0.1:5432/lazaretto",
        service_database_urls={}
        if args.database_url
        else {
            service: f"postgresql://{name}:{db_password}@127.0.0.1:5432/{name}"
            for service, name in STATEFUL.items()
        },
        modems=DEMO_MODEMS,
        ports={} if args.free_ports else DEFAULT_PORTS,
        smtp_policy_port=0 if args.free_ports else 10040,
        portal_on_subscriber_side=True,
    )
    # The first Ctrl-C, SIGTERM or SIGHUP (the terminal closed) unwinds whatever runs, start-up included.
    unwind_on_stop_signals()
    print("starting Lazaretto (lab BIND, Kea, CMTS and the six services)...", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run(config, proxy_port)
    print(
        "stopped: services, BIND, Kea (veth, netns, database) and the lab CMTS are gone; RabbitMQ and"
        " PostgreSQL keep running (deploy/bin/stop-peers stops them)",
        flush=True,
    )


def run(config: SystemConfig, proxy_port: int = PROXY_PORT) -> None:
    with (
        LabSystem(config) as system,
        LabHousehold(system, DEMO_MODEMS[0].cm_mac, HOUSEHOLD_PC_MAC, proxy_port) as household,
    ):
        assert system.bind is not None
        assert system.cmts is not None
        assert system.kea is not None
        token_file = config.workdir / "admin-token"
        token_file.write_text(system.admin_token + "\n")
        token_file.chmod(0o600)
        print(
            "\nLazaretto is up; every /readyz is green.\n"
            f"  portal        {system.portal_public_url}   (on {system.portal_ip}:{system.portal_https_port},"
            f" certificate from the lab CA {system.ca_file})\n"
            f"  captive API   {system.captive_api_url}   (RFC 8908; DHCP option 114 carries it)\n"
            f"  catch-all     http://{system.portal_ip}:{system.portal_catch_all_port}/"
            "   (any name, any path)\n"
            f"  portal HTTP   {system.url('portal')}/   (plain, for a reverse proxy and /readyz)\n"
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
            f"  broker users  {system.bus_users.prefix}<service>, one per service, in vhost "
            f"{system.bus_users.vhost} (deleted at exit)\n"
            f"  logs          {config.workdir / 'logs'}\n",
            flush=True,
        )
        print(story(system, household, token_file), flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            print("stopping...", flush=True)


def story(system: LabSystem, household: LabHousehold, token_file: Path) -> str:
    """What a newcomer does next: the household, the infect command, the subscriber's view, the CLI."""
    state = household.state()
    workdir = system.workdir
    cli = f"lazaretto --token-file {token_file} --policy-url {system.url('policy')}"
    return (
        "The lab household (only addresses in the subscriber range above count as subscribers):\n"
        f"  PC {state.pc_mac} at {state.pc_ip} ({state.lease_class} pool, lease from Kea), in netns "
        f"{state.netns}, behind modem {state.cm_mac} on the lab CMTS\n"
        "What to do next:\n"
        f"  1. infect it:   .venv/bin/lazaretto-lab infect --workdir {workdir}\n"
        "                  (the PC scans its subnet; Suricata's alerts go to detector-snort)\n"
        f"  2. watch:       .venv/bin/{cli} cases list\n"
        f"                  (admin console, if installed: {system.url('policy')}/)\n"
        f"  3. be the PC:   open {household.proxy_url} in your browser: the portal as that PC sees it\n"
        "                  (a proxy inside the PC's namespace); tick the box to release the case\n"
        "  4. watch the release in the case list; the PC renews back into the normal pool\n"
        "Ctrl-C stops everything started here."
    )


if __name__ == "__main__":
    main()
