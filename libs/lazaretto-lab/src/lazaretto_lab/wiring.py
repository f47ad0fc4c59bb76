"""How the lab wires each service: one small function per service, from the running lab to the
`LAZARETTO_*` variables an operator would set for it.

The wiring lives here, in the lab, not in the service packages: a service must not import the lab (it
is a dev-only package that no image ships, and `tests/test_package_boundaries.py` forbids it), and
the wiring is made of lab objects (Kea's database, BIND's TSIG key, the lab CMTS's communities).
Keyed by service, so `LabSystem` asks for `WIRINGS[name]` instead of knowing every service's settings;
a new service adds one function below and nothing in `LabSystem`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lazaretto_lab.bind import LabBind
from lazaretto_lab.kea import LabKea
from lazaretto_lab.snmpd import LabCmts
from lazaretto_lab.tls import LabCertificates


@dataclass(frozen=True)
class CmtsTarget:
    """One lab CMTS as cmts-agent reaches it: a profile name and the address to talk to (the CMTS
    itself, or a relay in front of it)."""

    name: str
    cmts: LabCmts
    host: str
    port: int


@dataclass(frozen=True)
class LabWires:
    """What a service can be wired to: the running lab peers, the other services' URLs, the lab's
    secrets and per-service databases. Built by `LabSystem` once its peers run."""

    kea: LabKea
    bind: LabBind
    cmts: LabCmts
    urls: dict[str, str]
    database_urls: dict[str, str]
    workdir: Path
    eve_path: Path
    form_secret: str
    portal_ip: str
    portal_public_url: str
    smtp_policy_port: int
    smtp_threshold_per_hour: int
    verify_interval: float
    # The portal's TLS listener (its name's certificate, from the lab CA) and its port-80 catch-all.
    portal_certificates: LabCertificates | None = None
    portal_https_port: int | None = None
    portal_catch_all_port: int | None = None
    # Every CMTS when there are several or they sit behind relays (empty: `cmts`, directly).
    cmts_targets: tuple[CmtsTarget, ...] = ()


Wiring = Callable[[LabWires], dict[str, str]]
WIRINGS: dict[str, Wiring] = {}


def wiring(service: str) -> Callable[[Wiring], Wiring]:
    """Register the function that wires `service` (its import name, as `python -m` runs it)."""

    def register(fn: Wiring) -> Wiring:
        WIRINGS[service] = fn
        return fn

    return register


@wiring("policy")
def policy(w: LabWires) -> dict[str, str]:
    return {
        "LAZARETTO_DATABASE_URL": w.database_urls["policy"],
        "LAZARETTO_PROVISIONER_URL": w.urls["provisioner"],
        "LAZARETTO_CMTS_AGENT_URL": w.urls["cmts_agent"],
        # Every service starts at once in the lab: the snapshot policy publishes at its start may come
        # before the provisioner's queue is bound, and the provisioner gardens nobody before it has one.
        "LAZARETTO_ALLOWLIST_PUBLISH_INTERVAL": "5",
    }


@wiring("provisioner")
def provisioner(w: LabWires) -> dict[str, str]:
    return {
        "LAZARETTO_DATABASE_URL": w.database_urls["provisioner"],
        "LAZARETTO_KEA_DATABASE_URL": w.kea.dsn,
        "LAZARETTO_DNS_SERVER": w.bind.host,
        "LAZARETTO_DNS_PORT": str(w.bind.port),
        "LAZARETTO_TSIG_KEY_NAME": w.bind.tsig_key_name,
        "LAZARETTO_TSIG_SECRET": w.bind.tsig_secret,
        "LAZARETTO_TSIG_ALGORITHM": w.bind.tsig_algorithm,
        "LAZARETTO_QUARANTINE_ZONE": w.bind.quarantine_zone,
        "LAZARETTO_ALLOW_ZONE": w.bind.allow_zone,
        "LAZARETTO_PORTAL_NAME": w.bind.portal_name,
        "LAZARETTO_QUARANTINE_POOLS": json.dumps([str(w.kea.quarantine_cidr)]),
        # The subscriber subnet the detectors watch (its quarantine pool inside it): a garden command
        # for any other address is refused, as in production.
        "LAZARETTO_SUBSCRIBER_RANGES": json.dumps([str(w.kea.subnet)]),
        "LAZARETTO_GARDEN_SWEEP_INTERVAL": "10",
    }


@wiring("cmts_agent")
def cmts_agent(w: LabWires) -> dict[str, str]:
    direct = len(w.cmts_targets) <= 1 and all(t.port == t.cmts.port for t in w.cmts_targets)
    if not direct:
        profiles = [
            {
                "name": t.name,
                "host": t.host,
                "port": t.port,
                "read_community": t.cmts.ro_community,
                "write_community": t.cmts.rw_community,
                "timeout": 1,
                "verify_interval": w.verify_interval,
                "verify_max_wait": 60,
            }
            for t in w.cmts_targets
        ]
        return {
            "LAZARETTO_DATABASE_URL": w.database_urls["cmts_agent"],
            "LAZARETTO_CMTSES": json.dumps(profiles),
        }
    return {
        "LAZARETTO_DATABASE_URL": w.database_urls["cmts_agent"],
        "LAZARETTO_CMTS_HOST": w.cmts.host,
        "LAZARETTO_CMTS_PORT": str(w.cmts.port),
        "LAZARETTO_CMTS_READ_COMMUNITY": w.cmts.ro_community,
        "LAZARETTO_CMTS_WRITE_COMMUNITY": w.cmts.rw_community,
        "LAZARETTO_VERIFY_INTERVAL": str(w.verify_interval),
        "LAZARETTO_VERIFY_MAX_WAIT": "60",
        "LAZARETTO_SNMP_TIMEOUT": "1",
    }


@wiring("portal")
def portal(w: LabWires) -> dict[str, str]:
    env = {
        "LAZARETTO_HTTP_HOST": w.portal_ip,
        "LAZARETTO_POLICY_URL": w.urls["policy"],
        "LAZARETTO_FORM_SECRET": w.form_secret,
        "LAZARETTO_PUBLIC_URL": w.portal_public_url,
    }
    if w.portal_certificates is not None and w.portal_https_port is not None:
        env |= {
            "LAZARETTO_HTTPS_PORT": str(w.portal_https_port),
            "LAZARETTO_TLS_CERT_FILE": str(w.portal_certificates.cert_file),
            "LAZARETTO_TLS_KEY_FILE": str(w.portal_certificates.key_file),
        }
    if w.portal_catch_all_port is not None:
        env["LAZARETTO_CATCH_ALL_PORT"] = str(w.portal_catch_all_port)
    return env


@wiring("detector_snort")
def detector_snort(w: LabWires) -> dict[str, str]:
    sources = [{"path": str(w.eve_path), "format": "eve", "sensor": "lab-ids"}]
    return {
        "LAZARETTO_SOURCES": json.dumps(sources),
        "LAZARETTO_SUBSCRIBER_RANGES": json.dumps([str(w.kea.subnet)]),
        "LAZARETTO_CHECKPOINT_DIR": str(w.workdir / "detector-snort"),
    }


@wiring("detector_smtp")
def detector_smtp(w: LabWires) -> dict[str, str]:
    return {
        "LAZARETTO_POLICY_SERVER_PORT": str(w.smtp_policy_port),
        "LAZARETTO_SUBSCRIBER_RANGES": json.dumps([str(w.kea.subnet)]),
        "LAZARETTO_MESSAGES_PER_HOUR": str(w.smtp_threshold_per_hour),
        "LAZARETTO_STATE_DIR": str(w.workdir / "detector-smtp"),
    }
