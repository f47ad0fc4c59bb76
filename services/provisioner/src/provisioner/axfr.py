"""A zone transfer (AXFR over TCP, TSIG-verified) that returns only the owner names of the zone.

Reconcile needs to know which triggers the quarantine zone holds, not their data. dnspython's
`inbound_xfr` builds a full zone (every name, rdataset and rdata object): at 100,000 triggers that is
about a minute of CPU on a loaded 2-core machine. Here each message is read from the wire directly:
the owner names are decoded (compression pointers followed), every RDATA skipped unparsed, and only
the TSIG record is handed to dnspython, which verifies the signature chain over the raw messages
(RFC 8945 §5.3.1: the first and the last message must be signed, the ones between may be).
"""

from __future__ import annotations

import asyncio
import struct
import time

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig

_SOA = int(dns.rdatatype.SOA)
_TSIG = int(dns.rdatatype.TSIG)
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


class AxfrError(Exception):
    """The transfer was refused (`rcode` set) or its answer is malformed or not authentic."""

    def __init__(self, message: str, rcode: int | None = None) -> None:
        super().__init__(message)
        self.rcode = rcode


def read_name(wire: bytes, offset: int) -> tuple[bytes, int]:
    """The name at `offset` as lower-case dotted bytes (no trailing dot), and the offset after it."""
    labels: list[bytes] = []
    end = -1
    hops = 0
    while True:
        length = wire[offset]
        if length == 0:
            offset += 1
            break
        if length >= 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            hops += 1
            if hops > 127:
                raise AxfrError("compression pointer loop")
            continue
        labels.append(wire[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return b".".join(labels).lower(), (end if end >= 0 else offset)


class _Scan:
    """One message of the transfer: its owner names, SOA count and TSIG record (if signed)."""

    def __init__(self, wire: bytes) -> None:
        if len(wire) < _HEADER.size:
            raise AxfrError("short DNS message in the transfer")
        self.id, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
        self.rcode = flags & 0x000F
        self.owners: list[bytes] = []
        self.soas = 0
        self.tsig: tuple[dns.name.Name, dns.rdata.Rdata, int] | None = None
        offset = _HEADER.size
        for _ in range(qd):
            _, offset = read_name(wire, offset)
            offset += 4
        for index in range(an + ns + ar):
            start = offset
            owner, offset = read_name(wire, offset)
            rdtype, rdclass, _, rdlen = _RR_FIXED.unpack_from(wire, offset)
            offset += _RR_FIXED.size
            if index < an:
                if rdtype == _SOA:
                    self.soas += 1
                else:
                    self.owners.append(owner)
            elif rdtype == _TSIG:
                if index != an + ns + ar - 1:
                    raise AxfrError("TSIG record is not the last one")
                rd = dns.rdata.from_wire(rdclass, rdtype, wire, offset, rdlen)
                self.tsig = (dns.name.from_text(owner.decode("ascii")), rd, start)
            offset += rdlen
        if offset != len(wire):
            raise AxfrError("trailing bytes after the last record")


async def transfer_owner_names(
    server: str, port: int, zone: dns.name.Name, key: dns.tsig.Key, timeout: float
) -> list[bytes]:
    """Every owner name of `zone` but the apex SOA's, lower-case, dotted, absolute without the dot."""
    query = dns.message.make_query(zone, dns.rdatatype.AXFR, dns.rdataclass.IN)
    query.use_tsig(key)
    wire = query.to_wire()
    request_mac = query.mac
    owners: list[bytes] = []
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(server, port)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            ctx: dns.tsig.HMACTSig | dns.tsig.GSSTSig | None = None
            soas = 0
            first = True
            while soas < 2:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                message = await reader.readexactly(length)
                scan = _Scan(message)
                if scan.id != query.id:
                    raise AxfrError("answer to another query")
                if scan.rcode != dns.rcode.NOERROR:
                    raise AxfrError(f"transfer refused: {dns.rcode.to_text(scan.rcode)}", scan.rcode)
                if scan.tsig is not None:
                    owner, rd, start = scan.tsig
                    ctx = dns.tsig.validate(  # type: ignore[no-untyped-call]
                        message, key, owner, rd, int(time.time()), request_mac, start, ctx, True
                    )
                elif first or ctx is None:
                    raise AxfrError("unsigned answer to a signed transfer request")
                else:
                    ctx.update(message)  # type: ignore[no-untyped-call]
                soas += scan.soas
                if first and scan.soas == 0:
                    raise AxfrError("transfer does not start with the SOA")
                if soas >= 2 and scan.tsig is None:
                    raise AxfrError("the last message of the transfer is not signed")
                owners += scan.owners
                first = False
        finally:
            writer.close()
            await writer.wait_closed()
    return owners
