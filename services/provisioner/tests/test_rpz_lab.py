"""The RPZ adapter against a real BIND 9.18 resolver: TSIG-signed updates change what clients resolve."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator

import dns.asyncquery
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest

from lazaretto_lab.bind import LabBind
from lazaretto_lab.process import free_port
from provisioner.axfr import read_name
from provisioner.rpz import (
    RpzAdapter,
    RpzAuthError,
    RpzError,
    RpzRefused,
    RpzTimeout,
    RpzUnavailable,
)

WWW, WWW_IP = "www.example.test", "198.51.100.80"
AV, AV_IP = "av.example.test", "198.51.100.81"
MAIL, MAIL_IP = "mail.example.test", "198.51.100.25"


def dig(bind: LabBind, source: str, name: str) -> list[str]:
    """What a user sees: `dig -b SOURCE @127.0.0.1 -p PORT NAME +short`."""
    out = subprocess.run(
        [
            "dig",
            "-b",
            source,
            f"@{bind.host}",
            "-p",
            str(bind.port),
            name,
            "A",
            "+short",
            "+tries=3",
            "+time=5",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


async def resolve(bind: LabBind, source: str, name: str) -> list[str]:
    """A-record answers for `name` as seen by the client at `source` (following the CNAME chain)."""
    reply = await dns.asyncquery.udp(
        dns.message.make_query(name, "A"), bind.host, port=bind.port, source=source, timeout=5
    )
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    # An update is enforced ~0.15 s after NOERROR (min-update-interval 0); poll, don't sleep.
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


async def test_quarantine_redirects_only_that_client_and_release_restores(
    lab_bind: LabBind, rpz: RpzAdapter
) -> None:
    # given two clients resolving normally
    assert dig(lab_bind, "127.0.0.2", WWW) == [WWW_IP]
    assert not await rpz.is_quarantined("127.0.0.2")

    # when 127.0.0.2 is quarantined (twice: idempotent)
    await rpz.quarantine_client("127.0.0.2")
    await rpz.quarantine_client("127.0.0.2")
    assert await rpz.is_quarantined("127.0.0.2")

    # then every name it resolves points at the portal ...
    async def redirected() -> bool:
        return await resolve(lab_bind, "127.0.0.2", WWW) == [lab_bind.portal_ip]

    await eventually(redirected, "127.0.0.2 redirected to the portal")
    assert dig(lab_bind, "127.0.0.2", WWW) == [f"{lab_bind.portal_name}.", lab_bind.portal_ip]
    assert await resolve(lab_bind, "127.0.0.2", "no-such-host.example.org") == [lab_bind.portal_ip]
    assert await resolve(lab_bind, "127.0.0.2", lab_bind.portal_name) == [lab_bind.portal_ip]
    # ... except the allow-listed remediation sites
    assert dig(lab_bind, "127.0.0.2", AV) == [AV_IP]
    # and its neighbour is untouched
    assert dig(lab_bind, "127.0.0.3", WWW) == [WWW_IP]
    assert not await rpz.is_quarantined("127.0.0.3")

    # when it is released (twice: idempotent)
    await rpz.release_client("127.0.0.2")
    await rpz.release_client("127.0.0.2")
    assert not await rpz.is_quarantined("127.0.0.2")

    # then it resolves the real answer again
    async def restored() -> bool:
        return await resolve(lab_bind, "127.0.0.2", WWW) == [WWW_IP]

    await eventually(restored, "127.0.0.2 restored")
    assert dig(lab_bind, "127.0.0.2", WWW) == [WWW_IP]


async def test_allow_name_opens_a_remediation_site_for_quarantined_clients(
    lab_bind: LabBind, rpz: RpzAdapter
) -> None:
    client = "127.0.0.4"
    await rpz.quarantine_client(client)
    try:

        def mail_is(answer: list[str]) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await resolve(lab_bind, client, MAIL) == answer

            return check

        await eventually(mail_is([lab_bind.portal_ip]), "mail redirected")
        # when the site is allow-listed
        await rpz.allow_name(MAIL)
        await rpz.allow_name(MAIL + ".")  # same name, idempotent
        assert await rpz.is_allowed(MAIL)
        # then the quarantined client resolves it for real
        await eventually(mail_is([MAIL_IP]), "mail passed through")
        # and after disallowing, it is back behind the garden wall
        await rpz.disallow_name(MAIL)
        assert not await rpz.is_allowed(MAIL)
        await eventually(mail_is([lab_bind.portal_ip]), "mail redirected again")
    finally:
        await rpz.release_client(client)


async def test_cidr_trigger_and_zone_listing(lab_bind: LabBind, rpz: RpzAdapter) -> None:
    # given a whole quarantine pool as one trigger, plus a single address
    await rpz.quarantine_client("127.0.9.0/24")
    await rpz.quarantine_client("127.0.0.5")
    try:
        # then the zone holds exactly those triggers
        networks = await rpz.quarantined_networks()
        assert ipaddress.ip_network("127.0.9.0/24") in networks
        assert ipaddress.ip_network("127.0.0.5/32") in networks

        async def pool_redirected() -> bool:
            return await resolve(lab_bind, "127.0.9.77", WWW) == [lab_bind.portal_ip]

        await eventually(pool_redirected, "127.0.9.77 redirected")
        assert await resolve(lab_bind, "127.0.10.1", WWW) == [WWW_IP]
    finally:
        await rpz.release_client("127.0.9.0/24")
        await rpz.release_client("127.0.0.5")
    assert not {ipaddress.ip_network("127.0.9.0/24"), ipaddress.ip_network("127.0.0.5/32")} & (
        await rpz.quarantined_networks()
    )


async def test_wrong_secret_is_an_auth_error_without_the_secret(
    lab_bind: LabBind, make_rpz: Callable[..., RpzAdapter]
) -> None:
    wrong = base64.b64encode(b"w" * 32).decode()
    bad = make_rpz(secret=wrong)
    with pytest.raises(RpzAuthError) as caught:
        await bad.quarantine_client("127.0.0.6")
    text = f"{caught.value} {caught.value!r} {bad!r}"
    assert "BADSIG" in str(caught.value)
    assert wrong not in text
    assert lab_bind.tsig_secret not in text
    assert not caught.value.transient
    # and nothing changed
    assert not await make_rpz().is_quarantined("127.0.0.6")

    with pytest.raises(RpzAuthError, match="BADKEY"):
        await make_rpz(key_name="nobody-knows-me").quarantine_client("127.0.0.6")


async def test_refused_and_unreachable_are_classified(make_rpz: Callable[..., RpzAdapter]) -> None:
    # a zone the key may not update: REFUSED
    with pytest.raises(RpzRefused):
        await make_rpz(quarantine_zone="example.test").quarantine_client("127.0.0.7")
    # nothing listening: unavailable, worth a retry
    with pytest.raises(RpzUnavailable) as caught:
        await make_rpz(port=free_port()).release_client("127.0.0.7")
    assert caught.value.transient


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def test_no_answer_is_a_timeout(make_rpz: Callable[..., RpzAdapter], silent_server: int) -> None:
    with pytest.raises(RpzTimeout) as caught:
        await make_rpz(port=silent_server, timeout=1.0).quarantine_client("127.0.0.8")
    assert isinstance(caught.value, RpzError)
    assert caught.value.transient


def test_bad_secret_encoding_is_rejected_without_echo(lab_bind: LabBind) -> None:
    with pytest.raises(ValueError, match="not valid base64") as caught:
        RpzAdapter(lab_bind.host, lab_bind.port, key_name="k", secret="@@not-base64@@", portal_name="p.test")
    assert "not-base64" not in str(caught.value)


async def test_zone_listing_needs_a_signed_transfer(
    make_rpz: Callable[..., RpzAdapter], silent_server: int
) -> None:
    # A wrong secret: BIND refuses the transfer
    with pytest.raises(RpzAuthError):
        await make_rpz(secret=base64.b64encode(b"w" * 32).decode()).quarantined_networks()
    # Nobody answering: a timeout, worth a retry
    with pytest.raises(RpzTimeout):
        await make_rpz(port=silent_server, timeout=1.0).quarantined_networks()


async def test_an_unsigned_transfer_answer_is_not_believed(make_rpz: Callable[..., RpzAdapter]) -> None:
    """A server (or anyone on the path) answering the signed AXFR without TSIG: not a zone listing."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        query = dns.message.from_wire(await reader.readexactly(length), keyring=False)
        response = dns.message.make_response(query)
        origin = query.question[0].name
        soa = dns.rrset.from_text(origin, 60, "IN", "SOA", "ns. admin. 1 60 60 60 60")
        fake = dns.rrset.from_text(
            dns.name.from_text("32.5.0.0.127.rpz-client-ip", origin), 60, "IN", "CNAME", "."
        )
        response.answer = [soa, fake, soa]
        wire = response.to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RpzError) as caught:
            await make_rpz(port=port, timeout=5.0).quarantined_networks()
        assert "AxfrError" in str(caught.value)
    finally:
        server.close()
        await server.wait_closed()


def test_owner_names_are_read_through_compression_pointers() -> None:
    query = dns.message.make_query("quarantine.rpz.", "AXFR")
    response = dns.message.make_response(query)
    origin = dns.name.from_text("quarantine.rpz.")
    response.answer = [
        dns.rrset.from_text(dns.name.from_text("32.7.0.0.10.rpz-client-ip", origin), 60, "IN", "CNAME", "."),
        dns.rrset.from_text(dns.name.from_text("24.0.9.0.127.rpz-client-ip", origin), 60, "IN", "CNAME", "."),
    ]
    wire = response.to_wire()  # the second owner's suffix is a pointer into the first
    offset = 12
    _, offset = read_name(wire, offset)
    offset += 4
    owners = []
    for _ in range(2):
        owner, offset = read_name(wire, offset)
        owners.append(owner)
        (rdlen,) = struct.unpack_from("!H", wire, offset + 8)
        offset += 10 + rdlen
    assert owners == [
        b"32.7.0.0.10.rpz-client-ip.quarantine.rpz",
        b"24.0.9.0.127.rpz-client-ip.quarantine.rpz",
    ]
    assert offset == len(wire)
