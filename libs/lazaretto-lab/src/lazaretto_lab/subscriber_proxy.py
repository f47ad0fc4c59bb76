"""Lab only: the portal as the household's PC sees it, in the newcomer's own browser.

`ip netns exec <the PC's netns> python -m lazaretto_lab.subscriber_proxy --fd N --workdir run` with a
listening socket made on the host's loopback (`lazaretto_lab.household`). The process runs inside the
PC's network namespace, so each request is passed on from the PC's current address (read from the
household's state file: it changes when the PC moves into the quarantine pool and back): the portal's
name is resolved by the DNS server of the PC's lease, its certificate verified against the lab CA,
and the portal identifies the visitor by the connection's address alone, as it does for any
subscriber. Redirects to the portal's own https address are rewritten to the proxy's, so the browser
stays on it. Nothing here adds or trusts a header that names a client.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import dns.message
import dns.query
import dns.rdatatype
import httpx

from .household import HouseholdState

# Hop-by-hop headers (RFC 9110 §7.6.1) and what httpx recomputes; client-identity headers are dropped
# so the request reaches the portal as the PC's browser would send it.
_DROP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
}  # fmt: skip
_DROP_BACK = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def resolve(name: str, state: HouseholdState) -> str:
    """The A record the PC's own DNS server (its lease's) gives for `name`, asked from the PC's address."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    answer = dns.query.udp(query, state.dns_server, timeout=5, source=state.pc_ip)
    addresses = [r.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]
    if not addresses:
        raise RuntimeError(f"{name} does not resolve for the PC at {state.pc_ip}")
    return str(addresses[-1])


class SubscriberView(BaseHTTPRequestHandler):
    server_version = "lazaretto-lab-subscriber-proxy"
    workdir: Path

    def do_GET(self) -> None:
        self._pass_on()

    def do_HEAD(self) -> None:
        self._pass_on()

    def do_POST(self) -> None:
        self._pass_on()

    def _pass_on(self) -> None:
        state = HouseholdState.read(self.workdir)
        portal = urlsplit(state.portal_url)
        name = portal.hostname or ""
        port = portal.port or 443
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _DROP]
        try:
            address = resolve(name, state)
            context = ssl.create_default_context(cafile=state.ca_file)
            transport = httpx.HTTPTransport(verify=context, local_address=state.pc_ip)
            with httpx.Client(transport=transport, timeout=15) as client:
                answer = client.request(
                    self.command,
                    f"https://{address}:{port}{self.path}",
                    headers=[("Host", portal.netloc), *headers],
                    content=body,
                    extensions={"sni_hostname": name},  # verify the portal's certificate by its name
                )
        except Exception as exc:  # the PC is offline while its modem restarts: say so, keep serving
            self._say(502, f"The PC at {state.pc_ip} cannot reach the portal now ({exc}). Try again.\n")
            return
        self.send_response(answer.status_code)
        for key, value in answer.headers.multi_items():
            if key.lower() in _DROP_BACK:
                continue
            if key.lower() == "location" and value.startswith(state.portal_url.rstrip("/")):
                value = value.removeprefix(state.portal_url.rstrip("/")) or "/"
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.content)

    def _say(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(listen_fd: int, workdir: Path) -> None:
    listener = socket.socket(fileno=listen_fd)
    SubscriberView.workdir = workdir
    server = ThreadingHTTPServer(listener.getsockname()[:2], SubscriberView, bind_and_activate=False)
    server.socket.close()
    server.socket = listener  # already bound on the host's loopback, before this process changed namespace
    print(f"subscriber view of the portal on http://127.0.0.1:{listener.getsockname()[1]}/", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--fd", type=int, required=True, help="a listening TCP socket inherited from the parent"
    )
    parser.add_argument("--workdir", type=Path, required=True, help="make run's work directory")
    args = parser.parse_args()
    try:
        serve(args.fd, args.workdir)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
