"""The abuse desk's manual cases: by address (now, or as of a time: attributed as of then), by device
(CPE MAC) or by household (CM MAC), each with the evidence the desk holds (spam complaint, virus,
copyright notice). Extends the admin API's `POST /v1/quarantine` compatibly: `{"ip", "reason"}` still
means "the device holding this address now"."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, Self

from pydantic import AwareDatetime, ConfigDict, Field, model_validator

from lazaretto_core.attribution import DeviceLeases
from lazaretto_core.contracts import Category, IpAddress, Mac, Scope, StorableModel, utcnow

from . import identity
from .attribution import Attribution, Attributor

EvidenceKind = Literal["spam_complaint", "virus", "copyright_notice", "abuse_report", "other"]
# How far back a device's leases are read to find where it is now.
_LEASE_LOOKBACK = timedelta(days=7)


class Evidence(StorableModel):
    """One piece of the desk's evidence: what it is, its reference (ticket, notice id), when, a summary."""

    model_config = ConfigDict(extra="forbid")

    kind: EvidenceKind
    reference: str = Field(default="", max_length=200)
    received_at: AwareDatetime | None = None
    summary: str = Field(default="", max_length=2000)
    url: str | None = Field(default=None, max_length=500)


class QuarantineRequest(StorableModel):
    """Exactly one of `ip` (with `at`: the device that held it then), `mac` (a device) or `cm_mac` (a
    household: scope modem; `ip` may name one of its addresses)."""

    model_config = ConfigDict(extra="forbid")

    ip: IpAddress | None = None
    at: AwareDatetime | None = None
    mac: Mac | None = None
    cm_mac: Mac | None = None
    reason: str = Field(min_length=1, max_length=500)
    category: Category = "other"
    scope: Scope = "cpe"
    # The operator's own name, as they give it (the audit also records the token that acted).
    operator: str = Field(default="operator", min_length=1, max_length=64)
    evidence: list[Evidence] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _one_subject(self) -> Self:
        if self.mac is not None and (self.ip is not None or self.cm_mac is not None):
            raise ValueError("name the device by mac alone")
        if self.ip is None and self.mac is None and self.cm_mac is None:
            raise ValueError("name the subject: ip (and optionally at), mac, or cm_mac")
        if self.at is not None and self.ip is None:
            raise ValueError("at goes with ip: the device that held that address at that time")
        if self.at is not None and self.at > utcnow() + timedelta(minutes=5):
            raise ValueError("at is in the future")
        if self.cm_mac is not None:
            self.scope = "modem"
        return self

    def describe(self) -> str:
        if self.mac is not None:
            return f"device {self.mac}"
        if self.cm_mac is not None:
            return f"household {self.cm_mac}"
        return f"{self.ip}" + (f" as of {self.at.isoformat()}" if self.at else "")


class NotFound(Exception):
    """The subject cannot be placed: no address known for it."""


async def attribute(
    attributor: Attributor, request: QuarantineRequest
) -> tuple[Attribution, DeviceLeases | None]:
    """The device the request names, and its leases since then (so the garden goes where it is now)."""
    if request.mac is not None:
        return await _by_device(attributor, request.mac)
    if request.ip is not None:
        attribution = await attributor.attribute(request.ip, request.at)
        if request.cm_mac is not None and attribution.cm_mac not in (None, request.cm_mac):
            raise NotFound(f"{request.ip} is behind modem {attribution.cm_mac}, not {request.cm_mac}")
        if request.cm_mac is not None and attribution.cm_mac is None:
            attribution = Attribution(
                attribution.ip,
                attribution.cpe_mac,
                request.cm_mac,
                attribution.at,
                attribution.found,
                attribution.lease,
                attribution.conflict,
                attribution.cmts,
            )
        leases = None
        if attribution.cpe_mac is not None:
            leases = await attributor.device_leases(attribution.cpe_mac, attribution.at)
        return attribution, leases
    assert request.cm_mac is not None
    return await _by_household(attributor, request.cm_mac)


async def _by_device(attributor: Attributor, mac: str) -> tuple[Attribution, DeviceLeases | None]:
    now = utcnow()
    leases = await attributor.device_leases(mac, now - _LEASE_LOOKBACK)
    modem = await attributor.modem_of_cpe(mac)
    current = identity.current_lease(leases)
    if current is not None:
        cm_mac, cmts = (modem.cm_mac, modem.cmts) if modem else (None, None)
        return Attribution(current.ip, mac, cm_mac, now, "lease", current, cmts=cmts), leases
    if modem is not None and modem.ip is not None:
        return Attribution(modem.ip, mac, modem.cm_mac, now, "cmts", cmts=modem.cmts), leases
    raise NotFound(f"device {mac} holds no lease and no CMTS lists an address for it")


async def _by_household(attributor: Attributor, cm_mac: str) -> tuple[Attribution, DeviceLeases | None]:
    """A household: the modem's CPEs as its CMTS lists them; the case follows the first that has an
    address (the garden of a modem case covers the whole household anyway)."""
    household = await attributor.cpes_of_modem(cm_mac)
    if household is None:
        raise NotFound(f"no CMTS lists modem {cm_mac}")
    for cpe in household.cpes:
        try:
            attribution, leases = await _by_device(attributor, cpe.cpe_mac)
        except NotFound:
            continue
        return (
            Attribution(
                attribution.ip,
                attribution.cpe_mac,
                cm_mac,
                attribution.at,
                attribution.found,
                attribution.lease,
                cmts=household.cmts,
            ),
            leases,
        )
    raise NotFound(f"no device behind modem {cm_mac} has an address: name one with ip")
