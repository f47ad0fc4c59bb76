"""Provisioner settings: its database, the DHCP backend (Kea or dhcpd), BIND and its TSIG key, reconcile."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from lazaretto_core.settings import ServiceSettings


class ProvisionerSettings(ServiceSettings):
    service_name: ClassVar[str] = "provisioner"

    http_port: int = 8300
    admin_token: SecretStr
    # Provisioner's own database: the garden's desired state per layer (start-peers makes it).
    database_url: SecretStr = SecretStr(
        "postgresql://lazaretto_provisioner:lazaretto@127.0.0.1:5432/lazaretto_provisioner"
    )
    # Which DHCP server the garden's DHCP layer drives: Kea (host database) or ISC dhcpd (OMAPI).
    dhcp_backend: Literal["kea", "dhcpd"] = "kea"
    # ISC dhcpd's OMAPI listener and key (`omapi-port`, `omapi-key`), for dhcp_backend = "dhcpd".
    dhcpd_omapi_host: str = "127.0.0.1"
    dhcpd_omapi_port: int = 7911
    dhcpd_omapi_key_name: str = "omapi_key"
    dhcpd_omapi_secret: SecretStr | None = None
    dhcpd_omapi_algorithm: Literal["hmac-md5", "hmac-sha256"] = "hmac-md5"
    # dhcpd's class whose members get the quarantine pool (`class "quarantine" { match hardware; }`).
    dhcpd_quarantine_class: str = "quarantine"
    # Seconds between reconciles of every layer with the desired state (one also runs at start).
    reconcile_interval: float = Field(default=300.0, gt=0)
    # Kea's PostgreSQL lease and host database (the one `kea-admin db-init pgsql` created); with
    # dhcp_backend = "dhcpd" it is not used (no lease history, nothing follows the device).
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

    @model_validator(mode="after")
    def _dhcpd_needs_its_key(self) -> ProvisionerSettings:
        if self.dhcp_backend == "dhcpd" and self.dhcpd_omapi_secret is None:
            raise ValueError("dhcp_backend=dhcpd needs dhcpd_omapi_secret (the OMAPI key's base64 secret)")
        return self
