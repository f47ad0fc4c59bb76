"""Provisioner settings: its database, the DHCP backend (Kea or dhcpd), BIND and its TSIG key, reconcile."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator

from lazaretto_core.settings import MAX_DAYS, ServiceSettings


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
    # The subscribers' address ranges (as the detectors have them): a garden command for an address
    # outside them is refused, whoever sent it. Empty: not checked (a warning at start says so).
    subscriber_ranges: tuple[IPv4Network | IPv6Network, ...] = ()
    # ISC dhcpd's OMAPI listener and key (`omapi-port`, `omapi-key`), for dhcp_backend = "dhcpd".
    dhcpd_omapi_host: str = "127.0.0.1"
    dhcpd_omapi_port: int = 7911
    dhcpd_omapi_key_name: str = "omapi_key"
    dhcpd_omapi_secret: SecretStr | None = None
    dhcpd_omapi_algorithm: Literal["hmac-md5", "hmac-sha256"] = "hmac-md5"
    # dhcpd's leases file (`-lf`), readable by the provisioner: tailed into lease history in its own
    # database, so attribution by address and time works and the garden follows a device to a new
    # address, as with Kea. Unset: no lease history with dhcpd (the command's own address is gardened).
    dhcpd_leases_file: Path | None = None
    # Seconds between reads of the leases file (an interval starts at most this late).
    dhcpd_leases_poll_interval: float = Field(default=1.0, gt=0)
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
    # Names a quarantined client may still resolve, on top of the remediation allow-list (shipped with
    # lazaretto_core plus `remediation_file`, the operator's additions in the same YAML format).
    allow_names: tuple[str, ...] = ()
    remediation_file: Path | None = None
    # The packet-filter layer (optional): nftables on the router in front of the subscribers.
    nft_enabled: bool = False
    # The router's network namespace (`ip netns` name or path) when it is not the provisioner's own.
    nft_netns: str | None = None
    nft_table: str = "lazaretto_garden"
    # Where plain HTTP of a gardened device is redirected (the portal sees the real client address).
    nft_portal_address: IPv4Address | None = None
    nft_portal_port: int = Field(default=80, gt=0, lt=65536)
    # The garden resolvers (BIND with the response-policy zones): the only DNS a gardened device gets.
    nft_resolvers: tuple[IPv4Address, ...] = ()
    # The ISP's own submission servers: a device in smtp_block mode may still use 465/587 there.
    nft_mail_servers: tuple[IPv4Network, ...] = ()
    # Seconds between re-resolving the allow-list's names into the allow set.
    nft_allow_refresh_interval: float = Field(default=3600.0, gt=0)
    # Kea's quarantine pools as CIDRs: one rpz-client-ip trigger each, installed at start. Keep them
    # CIDR-aligned and apart from the normal pools (an address inside one is never gardened per device).
    quarantine_pools: tuple[IPv4Network, ...] = ()
    # Household quarantine (scope `modem`): the operator's filtered DOCSIS config file, as the modem's
    # reservation hands it out (boot file name, and the TFTP server when it is not the usual one).
    modem_filtered_boot_file: str | None = Field(default=None, min_length=1, max_length=128)
    modem_filtered_next_server: IPv4Address | None = None
    # cmts-agent's admin API, asked which CPEs are behind a household's modem (none: only the command's).
    cmts_agent_url: str | None = None
    cmts_agent_token: SecretStr | None = None
    # Seconds between sweeps that move the garden with the devices; the lease trigger's NOTIFY moves
    # it at once, the sweep only catches what a lost notification missed.
    garden_sweep_interval: float = Field(default=30.0, gt=0)
    # Days an ended lease interval is kept (attribution of evidence older than this is impossible).
    lease_history_days: int = Field(default=400, gt=0, le=MAX_DAYS)

    @model_validator(mode="after")
    def _settings_complete(self) -> Self:
        if self.nft_enabled and self.nft_portal_address is None:
            raise ValueError("nft_enabled needs nft_portal_address (where gardened HTTP is redirected)")
        if self.cmts_agent_url and self.cmts_agent_token is None:
            raise ValueError("cmts_agent_url needs cmts_agent_token (cmts-agent's admin token)")
        if self.dhcp_backend == "dhcpd" and self.dhcpd_omapi_secret is None:
            raise ValueError("dhcp_backend=dhcpd needs dhcpd_omapi_secret (the OMAPI key's base64 secret)")
        return self
