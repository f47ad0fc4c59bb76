"""The remediation allow-list: the curated, versioned list shipped with Lazaretto, plus the operator's.

One list feeds every place that must agree: the allow RPZ zone and the packet filter's allow set
(provisioner) and the links on the portal page (a link the garden blocks would be a broken promise).
The operator's file (same format) adds entries, typically the ISP's own billing and support sites;
it cannot remove shipped ones (a garden without OS updates and CRLs leaves machines unrepairable).
"""

from __future__ import annotations

import importlib.resources
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

Purpose = Literal["antivirus", "os_update", "certificates", "time", "isp"]
# RFC 1035 labels, optionally behind one leading `*.` wildcard label.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = rf"^(\*\.)?(?:{_LABEL}\.)+{_LABEL}$"


class RemediationEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # A DNS name; `*.example.com` covers every name below example.com, not example.com itself.
    name: str = Field(pattern=_NAME, max_length=253)
    purpose: Purpose
    label: str = Field(min_length=1, max_length=120)
    # A page the portal may link to; its host must be covered by the list (checked on load).
    link: HttpUrl | None = None
    # Addresses reachable without DNS (e.g. the ISP's support site): go straight into the packet
    # filter's allow set.
    networks: tuple[IPv4Network, ...] = ()

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower().rstrip(".") if isinstance(value, str) else value

    def covers(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name


class RemediationFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1, max_length=40)
    entries: tuple[RemediationEntry, ...]


class RemediationList(BaseModel):
    """The merged list: `version` names both parts (`shipped+operator`) so logs say what was live."""

    model_config = ConfigDict(frozen=True)

    version: str
    entries: tuple[RemediationEntry, ...]

    @model_validator(mode="after")
    def _links_are_allowed(self) -> RemediationList:
        for entry in self.entries:
            if entry.link is not None and not self.allows(entry.link.host or ""):
                raise ValueError(f"link {entry.link} of {entry.name!r} is not covered by the allow-list")
        return self

    def allows(self, host: str) -> bool:
        return any(entry.covers(host) for entry in self.entries)

    def allows_url(self, url: str) -> bool:
        return self.allows(urlsplit(url).hostname or "")

    def names(self) -> tuple[str, ...]:
        """Every DNS name (with its `*.` wildcard where it has one), without duplicates, in order."""
        return tuple(dict.fromkeys(entry.name for entry in self.entries))

    def networks(self) -> tuple[IPv4Network, ...]:
        return tuple(dict.fromkeys(net for entry in self.entries for net in entry.networks))

    def links(self, purpose: Purpose | None = None) -> tuple[RemediationEntry, ...]:
        return tuple(e for e in self.entries if e.link is not None and purpose in (None, e.purpose))


def _read(text: str, source: str) -> RemediationFile:
    try:
        return RemediationFile.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"remediation allow-list {source}: {exc}") from None


def shipped() -> RemediationFile:
    text = importlib.resources.files("lazaretto_core").joinpath("data/remediation.yaml").read_text()
    return _read(text, "(shipped)")


def load_remediation(operator_file: Path | None = None) -> RemediationList:
    """The shipped list plus the operator's file, if any; raises ValueError naming the bad part."""
    base = shipped()
    if operator_file is None:
        return RemediationList(version=base.version, entries=base.entries)
    extra = _read(operator_file.read_text(), str(operator_file))
    return RemediationList(version=f"{base.version}+{extra.version}", entries=base.entries + extra.entries)
