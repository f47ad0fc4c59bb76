"""Provisioner settings: Kea's host database, the BIND primary and its TSIG key, remediation sites."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import ClassVar

from pydantic import Field, SecretStr

from lazaretto_core.settings import ServiceSettings


class ProvisionerSettings(ServiceSettings):
    service_name: ClassVar[str] = "provisioner"

    http_port: int = 8300
    admin_token: SecretStr
    # Kea's PostgreSQL lease and host database (the one `kea-admin db-init pgsql` created).
    kea_database_url: SecretStr = SecretStr("postgresql://kea:kea@127.0.0.1:5432/kea")
    dns_server: str = "127.0.0.1"
    dns_port: int = 53
    tsig_key_name: str = "lazaretto-rpz"
    tsig_secret: SecretStr
    tsig_algorithm: str = "hmac-sha256"
    quarantine_zone: str = "quarantine.rpz"
    allow_zone: str = "allow.rpz"
    # Every answer a quarantined client gets points here.
    portal_name: str = "portal.lazaretto.test"
    # Names a quarantined client may still resolve (antivirus, OS updates); `*.` covers subdomains.
    allow_names: tuple[str, ...] = ()
    # Kea's quarantine pools as CIDRs: one rpz-client-ip trigger each, installed at start. Keep them
    # CIDR-aligned and apart from the normal pools (an address inside one is never gardened per device).
    quarantine_pools: tuple[IPv4Network, ...] = ()
    # Seconds between sweeps that move the garden with the devices; the lease trigger's NOTIFY moves
    # it at once, the sweep only catches what a lost notification missed.
    garden_sweep_interval: float = Field(default=30.0, gt=0)
    # Days an ended lease interval is kept (attribution of evidence older than this is impossible).
    lease_history_days: int = Field(default=400, gt=0)
