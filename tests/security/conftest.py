"""One lab system for the security tests (starting it is the slow part): all six services on the real
peers, each with known secrets, the detector's HTTP ingest on, and the portal behind a trusted proxy
(loopback) so a test can be any subscriber address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazaretto_lab.snmpd import LabModem
from lazaretto_lab.system import LabSystem, SystemConfig
from lazaretto_lab.testing import (
    AMQP_PASSWORD,
    AMQP_USER,
    create_database,
    create_vhost,
    database_dsn,
    delete_vhost,
    drop_database,
)

CM_MAC = "00:02:8a:d3:7c:6e"
HEAD_TIMEOUT = 2.0
POLICY_REQUEST_TIMEOUT = 2.0


class SecurityLab(LabSystem):
    """The lab system with the detector's ingest endpoint on and the portal trusting loopback's
    X-Forwarded-For (as behind a reverse proxy): the settings an operator sets for both."""

    def __init__(self, config: SystemConfig) -> None:
        super().__init__(config)
        self.ingest_token = "ingest-" + self.admin_token

    def _env(self, name: str) -> dict[str, str]:
        env = super()._env(name)
        # Short deadlines, so the slowloris test sees the cut within seconds (defaults: 10 s each).
        env["LAZARETTO_HTTP_HEAD_TIMEOUT"] = str(HEAD_TIMEOUT)
        if name == "detector_smtp":
            env["LAZARETTO_REQUEST_TIMEOUT"] = str(POLICY_REQUEST_TIMEOUT)
        if name == "detector_snort":
            env["LAZARETTO_INGEST_TOKEN"] = self.ingest_token
        if name == "portal":
            env["LAZARETTO_TRUSTED_PROXIES"] = json.dumps(["127.0.0.1/32"])
        return env

    def secrets(self) -> dict[str, str]:
        """Every secret value the services were given, by name."""
        assert self.bind is not None
        assert self.cmts is not None
        assert self.kea is not None
        found = {
            "admin_token": self.admin_token,
            "portal_token": self.portal_token,
            "form_secret": self.form_secret,
            "ingest_token": self.ingest_token,
            "tsig_secret": self.bind.tsig_secret,
            "cmts_write_community": self.cmts.rw_community,
            "cmts_read_community": self.cmts.ro_community,
        }
        for service, url in {**self.database_urls, "kea": self.kea.dsn}.items():
            password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
            if password:
                found[f"{service}_database_password"] = password
        return found


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSystem]:
    vhost = create_vhost()
    database = asyncio.run(create_database("security"))
    config = SystemConfig(
        workdir=Path(tmp_path_factory.mktemp("security")) / "system",
        amqp_url=f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/{vhost}",
        database_url=database_dsn(database),
        modems=[LabModem(CM_MAC, "10.1.0.10")],
    )
    try:
        with SecurityLab(config) as running:
            yield running
    finally:
        asyncio.run(drop_database(database))
        delete_vhost(vhost)


@pytest.fixture(scope="session")
def lab_secrets(lab: LabSystem) -> dict[str, str]:
    """Every secret the lab's services were given, by name (tokens, TSIG key, communities, passwords)."""
    assert isinstance(lab, SecurityLab)
    return lab.secrets()
