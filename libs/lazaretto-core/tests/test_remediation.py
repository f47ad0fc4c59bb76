"""The remediation allow-list: the shipped data loads, wildcards mean what DNS means, links are covered."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazaretto_core.remediation import load_remediation


def test_shipped_list_loads_with_a_version_and_every_purpose() -> None:
    remediation = load_remediation()
    assert remediation.version
    purposes = {entry.purpose for entry in remediation.entries}
    assert {"antivirus", "os_update", "certificates", "time"} <= purposes
    assert remediation.links("antivirus"), "the portal needs antivirus links to show"


def test_wildcard_covers_names_below_only() -> None:
    remediation = load_remediation()
    assert remediation.allows("download.eset.com")
    assert remediation.allows("DOWNLOAD.ESET.COM.")
    assert not remediation.allows("eset.com")
    assert not remediation.allows("evil-eset.com")
    assert remediation.allows("pool.ntp.org")
    assert remediation.allows("0.pool.ntp.org")
    assert remediation.allows_url("https://www.malwarebytes.com/mwb-download")
    assert not remediation.allows_url("https://example.com/")


def test_every_shipped_link_is_allowed() -> None:
    remediation = load_remediation()
    for entry in remediation.links():
        assert entry.link is not None
        assert remediation.allows_url(str(entry.link))


def test_operator_file_adds_entries_and_names_both_versions(tmp_path: Path) -> None:
    extra = tmp_path / "isp.yaml"
    extra.write_text(
        'version: "isp-7"\n'
        "entries:\n"
        '  - {name: "support.isp.example", purpose: isp, label: "Support",'
        ' link: "https://support.isp.example/help", networks: ["192.0.2.0/28"]}\n'
    )
    remediation = load_remediation(extra)
    assert remediation.version.endswith("+isp-7")
    assert remediation.allows("support.isp.example")
    assert [str(n) for n in remediation.networks()] == ["192.0.2.0/28"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ('version: "1"\nentries:\n  - {name: "bad name", purpose: isp, label: x}\n', "name"),
        ('version: "1"\nentries:\n  - {name: "a.example", purpose: games, label: x}\n', "purpose"),
        (
            'version: "1"\nentries:\n  - {name: "a.example", purpose: isp, label: x,'
            ' link: "https://b.example/"}\n',
            "not covered",
        ),
        ("version: [\n", "remediation allow-list"),
    ],
)
def test_bad_operator_file_is_refused_with_the_reason(tmp_path: Path, body: str, complaint: str) -> None:
    extra = tmp_path / "isp.yaml"
    extra.write_text(body)
    with pytest.raises(ValueError, match=complaint):
        load_remediation(extra)
