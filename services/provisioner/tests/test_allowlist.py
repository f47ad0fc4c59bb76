"""The remediation allow-list for the packet filter: names resolved, networks merged (pure logic)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from lazaretto_core.remediation import RemediationEntry, RemediationList
from provisioner.allowlist import AllowList
from provisioner.rpz import RpzAdapter


async def test_plain_names_are_resolved_and_wildcards_left_to_dns(rpz: RpzAdapter) -> None:
    asked: list[str] = []

    async def resolve(name: str) -> list[IPv4Address]:
        asked.append(name)
        return {"update.av.test": [IPv4Address("198.18.1.1"), IPv4Address("198.18.1.2")]}.get(name, [])

    remediation = RemediationList(
        version="1+isp",
        entries=(
            RemediationEntry(name="update.av.test", purpose="antivirus", label="AV"),
            RemediationEntry(name="*.cdn.av.test", purpose="antivirus", label="AV CDN"),
            RemediationEntry(
                name="support.isp.test",
                purpose="isp",
                label="Support",
                networks=(IPv4Network("198.18.2.0/24"),),
            ),
        ),
    )
    allow = AllowList(remediation, ["Extra.Example.TEST.", "update.av.test"], rpz, None, resolve=resolve)
    # Names for the allow zone: every one once, the operator's setting normalised
    assert allow.names == ("update.av.test", "*.cdn.av.test", "support.isp.test", "extra.example.test")
    # Addresses for the packet filter: the entries' networks and what the plain names resolve to now
    assert set(await allow.networks()) == {
        IPv4Network("198.18.2.0/24"),
        IPv4Network("198.18.1.1/32"),
        IPv4Network("198.18.1.2/32"),
    }
    assert sorted(asked) == ["extra.example.test", "support.isp.test", "update.av.test"]
