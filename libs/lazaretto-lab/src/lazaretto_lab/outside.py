"""The lab's "Internet" behind the router: small web, SMTP and DNS servers on fixed addresses.

`python -m lazaretto_lab.outside SPEC_JSON` runs inside the outside network namespace (see
`lazaretto_lab.router`). Every web server answers with its own name, the Host header it was asked for
and the client address it saw, so a test can tell the portal from the site the client asked for.
Every SMTP listener sends a real greeting (RFC 5321 220 line) and answers QUIT; each resolver answers
A queries from one fixed table.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


async def _http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        writer.close()
        return
    host = next(
        (
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"host:")
        ),
        "",
    )
    peer = writer.get_extra_info("peername")[0]
    body = f"{name} host={host} client={peer}\n".encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


async def _smtp(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"220 {name} ESMTP lab\r\n".encode())
    await writer.drain()
    try:
        while True:
            async with asyncio.timeout(10):
                line = await reader.readline()
            if not line:
                break
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            if verb in (b"EHLO", b"HELO"):
                writer.write(f"250 {name}\r\n".encode())
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except TimeoutError:
        pass
    writer.close()


class _Resolver(asyncio.DatagramProtocol):
    def __init__(self, records: dict[str, str]) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        answer = dns.message.make_response(query)
        question = query.question[0]
        ip = self.records.get(question.name.to_text().rstrip(".").lower())
        if ip is None:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            answer.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", ip))
        self.transport.sendto(answer.to_wire(), addr)


async def serve(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    servers: list[Any] = []
    for web in spec.get("web", []):
        servers.append(
            await asyncio.start_server(
                functools.partial(_http, web["name"]), web["ip"], web["port"], reuse_address=True
            )
        )
    for smtp in spec.get("smtp", []):
        for port in smtp["ports"]:
            servers.append(
                await asyncio.start_server(
                    functools.partial(_smtp, smtp["name"]), smtp["ip"], port, reuse_address=True
                )
            )
    for resolver in spec.get("dns", []):
        records = resolver["records"]
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_Resolver, records), local_addr=(resolver["ip"], 53)
        )
        servers.append(transport)
    print("outside services ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(serve(json.loads(args[0])))


if __name__ == "__main__":
    main()
