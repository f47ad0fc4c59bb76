"""The packet-filter garden on real nftables in a lab router namespace, checked with real traffic.

PCs in the subscriber namespace reach an "outside" (web, SMTP, DNS servers) only through the router,
where `NftGarden` keeps its table. What a subscriber would notice is what is asserted: the page curl
gets, whether an SMTP server greets, whether dig gets an answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from lazaretto_lab.router import LabRouter
from provisioner.nft import Mode, NftConfig, NftError, NftGarden

GARDENED, NEIGHBOUR, SPAMMER = "192.0.2.10", "192.0.2.11", "192.0.2.12"


@pytest.fixture(scope="module")
def router() -> Iterator[LabRouter]:
    with LabRouter() as lab:
        for pc in (GARDENED, NEIGHBOUR, SPAMMER):
            lab.add_pc(pc)
        yield lab


def nft_config(router: LabRouter, **overrides: object) -> NftConfig:
    a = router.addresses
    values: dict[str, object] = {
        "portal": IPv4Address(a.portal),
        "portal_port": a.portal_port,
        "resolvers": (IPv4Address(a.garden_resolver),),
        "mail_servers": (IPv4Network(f"{a.isp_mail}/32"),),
        "netns": router.router_netns,
    }
    values.update(overrides)
    return NftConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def nft(router: LabRouter) -> AsyncIterator[NftGarden]:
    garden = NftGarden(nft_config(router))
    await garden.install([IPv4Network(f"{router.addresses.remediation_web}/32")])
    yield garden
    await garden.uninstall()
    await garden.close()


async def test_a_gardened_pc_reaches_only_dns_the_portal_and_the_allow_list(
    router: LabRouter, nft: NftGarden
) -> None:
    a = router.addresses
    # Given a PC in the full garden
    await nft.apply([GARDENED])
    # Then any plain web site shows the portal, which sees the PC's own address and the asked-for host
    assert router.http_get(GARDENED, f"http://{a.origin_web}/") == (
        f"PORTAL host={a.origin_web} client={GARDENED}\n"
    )
    # And the allow-listed remediation site and the garden resolver still work
    assert router.http_get(GARDENED, f"http://{a.remediation_web}/").startswith("REMEDIATION ")
    assert router.dns(GARDENED, a.garden_resolver, a.remediation_name) == [a.remediation_web]
    # But another resolver, SMTP and HTTPS are refused or never answer
    assert router.dns(GARDENED, a.other_resolver, a.remediation_name) is None
    assert router.smtp(GARDENED, a.smtp, 25) == "refused"
    assert router.smtp(GARDENED, a.smtp, 587) == "refused"
    assert router.http_get(GARDENED, f"https://{a.origin_web}/") == "curl error 7"  # refused at once


async def test_another_pc_behind_the_same_modem_keeps_working(router: LabRouter, nft: NftGarden) -> None:
    a = router.addresses
    await nft.apply([GARDENED])
    assert router.http_get(NEIGHBOUR, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.dns(NEIGHBOUR, a.other_resolver, a.remediation_name) == [a.remediation_web]
    assert router.smtp(NEIGHBOUR, a.smtp, 25).startswith(f"connected {a.smtp} 250 mx.outside.test")


async def test_spam_only_blocks_mail_and_nothing_else(router: LabRouter, nft: NftGarden) -> None:
    a = router.addresses
    # Given a PC in smtp_block mode
    await nft.apply([SPAMMER], "smtp_block")
    # Then mail to outside servers is refused on 25, 465 and 587
    for port in (25, 465, 587):
        assert router.smtp(SPAMMER, a.smtp, port) == "refused", port
    # But the ISP's own submission server still answers on 465/587 (not on 25)
    assert router.smtp(SPAMMER, a.isp_mail, 587).startswith(f"connected {a.isp_mail} 250 submission.isp.test")
    assert router.smtp(SPAMMER, a.isp_mail, 25) == "refused"
    # And the web and any resolver keep working
    assert router.http_get(SPAMMER, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.dns(SPAMMER, a.other_resolver, a.remediation_name) == [a.remediation_web]


async def test_release_and_moves_between_modes(router: LabRouter, nft: NftGarden) -> None:
    a = router.addresses
    await nft.apply([GARDENED])
    # A full garden moved to smtp_block loosens it; a remove ends it; removing again is fine
    await nft.apply([GARDENED], "smtp_block")
    assert (await nft.elements()).modes() == {GARDENED: "smtp_block"}
    assert router.http_get(GARDENED, f"http://{a.origin_web}/").startswith("ORIGIN ")
    await nft.remove([GARDENED])
    await nft.remove([GARDENED])
    assert (await nft.elements()).modes() == {}
    assert router.smtp(GARDENED, a.smtp, 25).startswith("connected")


async def test_bulk_apply_list_and_repair(router: LabRouter, nft: NftGarden) -> None:
    a = router.addresses
    # Given 5,000 addresses applied in one call (one transaction), and the PC among them
    many: dict[str, Mode] = {f"10.{i // 250}.{i % 250}.1": "full" for i in range(5000)}
    await nft.apply_many({**many, GARDENED: "full", SPAMMER: "smtp_block"})
    elements = await nft.elements()
    assert len(elements.full) == 5001
    assert elements.smtp_block == {SPAMMER}
    assert elements.allow == (IPv4Network(f"{a.remediation_web}/32"),)
    # When an element is deleted by hand (drift)
    router.nft("delete", "element", "inet", nft.config.table, "full_v4", "{", GARDENED, "}")
    assert router.http_get(GARDENED, f"http://{a.origin_web}/").startswith("ORIGIN ")
    # Then replace() makes the sets exactly the desired state again, in one transaction
    await nft.replace({GARDENED: "full", SPAMMER: "smtp_block"})
    assert (await nft.elements()).modes() == {GARDENED: "full", SPAMMER: "smtp_block"}
    assert router.http_get(GARDENED, f"http://{a.origin_web}/").startswith("PORTAL ")
    # And re-installing the rules (a restart) keeps the gardened addresses
    await nft.install([IPv4Network(f"{a.remediation_web}/32")])
    assert (await nft.elements()).modes() == {GARDENED: "full", SPAMMER: "smtp_block"}
    # And a remove of many is one call too
    await nft.remove_many([GARDENED, SPAMMER, "10.0.0.1"])
    assert (await nft.elements()).modes() == {}


async def test_the_allow_set_is_replaced_atomically(router: LabRouter, nft: NftGarden) -> None:
    a = router.addresses
    await nft.apply([GARDENED])
    await nft.set_allowed([IPv4Network(f"{a.origin_web}/32"), IPv4Network("10.20.0.0/16")])
    assert set((await nft.elements()).allow) == {
        IPv4Network(f"{a.origin_web}/32"),
        IPv4Network("10.20.0.0/16"),
    }
    assert router.http_get(GARDENED, f"http://{a.origin_web}/").startswith("ORIGIN ")
    assert router.http_get(GARDENED, f"http://{a.remediation_web}/").startswith("PORTAL ")


async def test_quarantine_pools_are_gardened_whole(router: LabRouter) -> None:
    a = router.addresses
    garden = NftGarden(nft_config(router, quarantine_pools=(IPv4Network("192.0.2.8/29"),)))
    await garden.install()
    try:
        # No element for the PC: its address is in a quarantine pool
        assert (await garden.elements()).modes() == {}
        assert router.http_get(GARDENED, f"http://{a.origin_web}/").startswith("PORTAL ")
        assert router.http_get(SPAMMER, f"http://{a.origin_web}/").startswith("PORTAL ")
        assert router.http_get(NEIGHBOUR, f"http://{a.origin_web}/").startswith("PORTAL ")
    finally:
        await garden.uninstall()
        await garden.close()


async def test_bad_input_and_a_missing_namespace_are_clear_errors(router: LabRouter, nft: NftGarden) -> None:
    # Not an address literal: refused before libnftables could resolve it through DNS; nothing applied
    with pytest.raises(ValueError, match=r"192\.0\.2\.300"):
        await nft.apply([GARDENED, "192.0.2.300"])
    assert (await nft.elements()).modes() == {}
    nowhere = NftGarden(nft_config(router, netns="lazaretto-no-such-netns"))
    with pytest.raises(NftError, match="lazaretto-no-such-netns"):
        await nowhere.apply([GARDENED])
    await nowhere.close()
    # A table that is not installed: the batch fails as a whole, with nftables' message
    missing = NftGarden(nft_config(router, table="lazaretto_not_installed"))
    with pytest.raises(NftError, match="lazaretto_not_installed"):
        await missing.apply([GARDENED])
    with pytest.raises(NftError):
        await missing.ping()
    await missing.close()
