"""DNS side of the garden: BIND response-policy zones changed by TSIG-signed RFC 2136 updates.

The quarantine zone holds `rpz-client-ip` triggers (CNAME to the portal); the allow zone, listed
first in named.conf, holds QNAME `rpz-passthru` holes for remediation sites.
"""

from __future__ import annotations

import binascii
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from .axfr import AxfrError, transfer_owner_names

PASSTHRU = "rpz-passthru."
# Triggers per UPDATE message: a delete and an add of ~50 bytes each stay far below the 64 KiB a
# DNS message over TCP may carry, and BIND applies the whole message as one journal transaction.
UPDATE_BATCH = 250
_CLIENT_IP_LABEL = "rpz-client-ip"
T = TypeVar("T")


class RpzError(Exception):
    """A policy-zone change or look-up failed. Messages never carry the TSIG secret."""

    transient = False  # worth a delayed retry?

    def __init__(self, operation: str, zone: str, server: str, detail: str) -> None:
        super().__init__(f"RPZ {operation} on zone {zone} at {server}: {detail}")
        self.operation = operation
        self.zone = zone
        self.server = server
        self.detail = detail


class RpzRefused(RpzError):
    """The server refused (update not allowed for this key/zone, or query not allowed)."""


class RpzAuthError(RpzError):
    """TSIG failed: wrong secret (BADSIG), unknown key (BADKEY), clock skew (BADTIME), or NOTAUTH."""


class RpzTimeout(RpzError):
    """No answer in time."""

    transient = True


class RpzUnavailable(RpzError):
    """Could not reach the server (connection refused, network error)."""

    transient = True


class RpzServerError(RpzError):
    """Any other error rcode (SERVFAIL, NOTZONE, ...)."""

    transient = True


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def client_ip_owner(address: str) -> str:
    """The rpz-client-ip trigger name (relative to the policy zone) for an address or CIDR.

    '127.0.0.2' -> '32.2.0.0.127.rpz-client-ip'; '10.20.0.0/16' -> '16.0.0.20.10.rpz-client-ip';
    '2001:db8::1' -> '128.1.zz.db8.2001.rpz-client-ip' ('zz' stands for the '::' run).
    """
    net = ipaddress.ip_network(address, strict=True)
    if isinstance(net, ipaddress.IPv4Network):
        labels = str(net.network_address).split(".")[::-1]
    else:
        words = [format(int(w, 16), "x") for w in net.network_address.exploded.split(":")]
        # Replace the longest run (>= 2) of zero words with one 'zz', like '::' does.
        best_start, best_len, run_start = -1, 1, -1
        for i, word in enumerate([*words, "x"]):
            if word == "0" and run_start < 0:
                run_start = i
            elif word != "0" and run_start >= 0:
                if i - run_start > best_len:
                    best_start, best_len = run_start, i - run_start
                run_start = -1
        if best_start >= 0:
            words = [*words[:best_start], "zz", *words[best_start + best_len :]]
        labels = words[::-1]
    return f"{net.prefixlen}." + ".".join(labels) + f".{_CLIENT_IP_LABEL}"


def network_from_owner(relative_owner: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Inverse of `client_ip_owner`; None for names that are not client-IP triggers."""
    labels = relative_owner.rstrip(".").split(".")
    if len(labels) < 3 or labels[-1] != _CLIENT_IP_LABEL:
        return None
    prefix, body = labels[0], labels[1:-1][::-1]
    try:
        if len(body) == 4 and "zz" not in body:
            return ipaddress.IPv4Network(f"{'.'.join(body)}/{prefix}")
        text = ":".join("" if w == "zz" else w for w in body)
        if body[0] == "zz":
            text = ":" + text
        if body[-1] == "zz":
            text += ":"
        return ipaddress.IPv6Network(f"{text}/{prefix}")
    except ValueError:
        return None


class RpzAdapter:
    """Adds and removes quarantine triggers and allow-list holes on one BIND primary."""

    def __init__(
        self,
        server: str,
        port: int = 53,
        *,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        quarantine_zone: str = "quarantine.rpz",
        allow_zone: str = "allow.rpz",
        portal_name: str,
        ttl: int = 60,
        timeout: float = 5.0,
    ) -> None:
        self.server = server
        self.port = port
        self.quarantine_zone = dns.name.from_text(quarantine_zone)
        self.allow_zone = dns.name.from_text(allow_zone)
        self.portal_target = dns.name.from_text(portal_name)
        self.ttl = ttl
        self.timeout = timeout
        try:
            self._key = dns.tsig.Key(key_name, secret, algorithm)
        except (binascii.Error, ValueError):
            # The decoder's message could echo part of the secret: say only what is wrong.
            raise ValueError(f"TSIG secret for key {key_name!r} is not valid base64") from None

    def __repr__(self) -> str:
        return f"RpzAdapter(server={self.server!r}, port={self.port}, key={self._key.name.to_text()!r})"

    # -- quarantine zone: client-IP triggers ------------------------------------------------------

    async def quarantine_client(self, ip: str) -> None:
        """Rewrite every answer for client `ip` (or CIDR) to the portal. Idempotent."""
        owner = self._client_owner(ip)
        update = self._update(self.quarantine_zone)
        update.delete(owner)  # replace whatever action was there
        update.add(owner, self.ttl, dns.rdatatype.CNAME, self.portal_target.to_text())
        await self._send(update, "quarantine_client", self.quarantine_zone)

    async def release_client(self, ip: str) -> None:
        """Remove the trigger for `ip`; releasing a client that is not quarantined is a no-op."""
        update = self._update(self.quarantine_zone)
        update.delete(self._client_owner(ip))
        await self._send(update, "release_client", self.quarantine_zone)

    async def quarantine_clients(self, ips: Iterable[str], batch: int = UPDATE_BATCH) -> None:
        """`quarantine_client` for many addresses: one UPDATE message per `batch` triggers, not one each."""
        for chunk in _chunks([self._client_owner(ip) for ip in ips], batch):
            update = self._update(self.quarantine_zone)
            for owner in chunk:
                update.delete(owner)
                update.add(owner, self.ttl, dns.rdatatype.CNAME, self.portal_target.to_text())
            await self._send(update, "quarantine_clients", self.quarantine_zone)

    async def release_clients(self, ips: Iterable[str], batch: int = UPDATE_BATCH) -> None:
        """`release_client` for many addresses, `batch` per UPDATE message."""
        for chunk in _chunks([self._client_owner(ip) for ip in ips], batch):
            update = self._update(self.quarantine_zone)
            for owner in chunk:
                update.delete(owner)
            await self._send(update, "release_clients", self.quarantine_zone)

    async def is_quarantined(self, ip: str) -> bool:
        return await self._exists(self._client_owner(ip), self.quarantine_zone, "is_quarantined")

    async def quarantined_networks(self) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Every client-IP trigger now in the quarantine zone (zone transfer), for reconcile.

        Only the owner names are read from the transfer's wire messages (`axfr.py`): building
        dnspython's zone of 100,000 triggers cost most of a reconcile."""
        try:
            owners = await transfer_owner_names(
                self.server, self.port, self.quarantine_zone, self._key, self.timeout
            )
        except AxfrError as exc:
            if exc.rcode is not None:
                raise self._rcode_error(exc.rcode, "quarantined_networks", self.quarantine_zone) from None
            raise self._classify(exc, "quarantined_networks", self.quarantine_zone) from exc
        except Exception as exc:
            raise self._classify(exc, "quarantined_networks", self.quarantine_zone) from exc
        suffix = b"." + self.quarantine_zone.to_text(omit_final_dot=True).lower().encode("ascii")
        found: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        for owner in owners:
            if owner.endswith(suffix):
                net = network_from_owner(owner[: -len(suffix)].decode("ascii"))
                if net is not None:
                    found.add(net)
        return found

    # -- allow zone: remediation sites ------------------------------------------------------------

    async def allow_name(self, name: str) -> None:
        """Let quarantined clients resolve `name` normally (a leading '*.' covers subdomains)."""
        owner = self._allow_owner(name)
        update = self._update(self.allow_zone)
        update.delete(owner)
        update.add(owner, self.ttl, dns.rdatatype.CNAME, PASSTHRU)
        await self._send(update, "allow_name", self.allow_zone)

    async def allow_names(self, names: Sequence[str]) -> None:
        """Like `allow_name` for many names in one update (one zone change, one journal entry)."""
        if not names:
            return
        update = self._update(self.allow_zone)
        for name in names:
            owner = self._allow_owner(name)
            update.delete(owner)
            update.add(owner, self.ttl, dns.rdatatype.CNAME, PASSTHRU)
        await self._send(update, "allow_names", self.allow_zone)

    async def disallow_name(self, name: str) -> None:
        update = self._update(self.allow_zone)
        update.delete(self._allow_owner(name))
        await self._send(update, "disallow_name", self.allow_zone)

    async def is_allowed(self, name: str) -> bool:
        return await self._exists(self._allow_owner(name), self.allow_zone, "is_allowed")

    # -- internals -------------------------------------------------------------------------------

    def _client_owner(self, ip: str) -> dns.name.Name:
        return dns.name.from_text(client_ip_owner(ip), origin=self.quarantine_zone)

    def _allow_owner(self, name: str) -> dns.name.Name:
        # Policy owner names are relative to the policy zone: 'av.example' -> 'av.example.allow.rpz.'
        relative = dns.name.from_text(name, origin=None).relativize(dns.name.root)
        if not relative.labels:
            raise ValueError("cannot allow-list the root name")
        return relative.concatenate(self.allow_zone)

    def _update(self, zone: dns.name.Name) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(zone, keyring=self._key)

    async def _send(self, message: dns.message.Message, operation: str, zone: dns.name.Name) -> None:
        try:
            reply = await dns.asyncquery.tcp(message, self.server, port=self.port, timeout=self.timeout)
        except Exception as exc:
            raise self._classify(exc, operation, zone) from exc
        if reply.rcode() != dns.rcode.NOERROR:
            raise self._rcode_error(reply.rcode(), operation, zone)

    async def _exists(self, owner: dns.name.Name, zone: dns.name.Name, operation: str) -> bool:
        query = dns.message.make_query(owner, dns.rdatatype.ANY)
        query.flags &= ~dns.flags.RD  # RD=0: policy rewriting never applies to non-recursive queries
        query.use_tsig(self._key)
        try:
            reply = await dns.asyncquery.tcp(query, self.server, port=self.port, timeout=self.timeout)
        except Exception as exc:
            raise self._classify(exc, operation, zone) from exc
        rcode = reply.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return False
        if rcode != dns.rcode.NOERROR:
            raise self._rcode_error(rcode, operation, zone)
        return any(rrset.name == owner for rrset in reply.answer)

    def _rcode_error(self, rcode: dns.rcode.Rcode | int, operation: str, zone: dns.name.Name) -> RpzError:
        text = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
        where = f"{self.server}:{self.port}"
        if rcode == dns.rcode.REFUSED:
            return RpzRefused(operation, zone.to_text(), where, f"REFUSED for key {self._key.name}")
        if rcode in (dns.rcode.NOTAUTH, dns.rcode.BADSIG, dns.rcode.BADKEY, dns.rcode.BADTIME):
            return RpzAuthError(operation, zone.to_text(), where, f"{text} for key {self._key.name}")
        return RpzServerError(operation, zone.to_text(), where, text)

    def _classify(self, exc: BaseException, operation: str, zone: dns.name.Name) -> RpzError:
        where = f"{self.server}:{self.port}"
        key = self._key.name.to_text()
        # Only the exception's class name goes into the message: no library text, no secret.
        kind = type(exc).__name__
        if isinstance(exc, dns.tsig.PeerBadKey):
            return RpzAuthError(operation, zone.to_text(), where, f"BADKEY: server does not know key {key}")
        if isinstance(exc, dns.tsig.PeerBadSignature):
            return RpzAuthError(operation, zone.to_text(), where, f"BADSIG: wrong secret for key {key}")
        if isinstance(exc, dns.tsig.PeerBadTime):
            return RpzAuthError(operation, zone.to_text(), where, f"BADTIME: clock skew for key {key}")
        if isinstance(exc, dns.tsig.PeerError | dns.tsig.BadSignature | dns.tsig.BadKey | dns.tsig.BadTime):
            return RpzAuthError(operation, zone.to_text(), where, f"TSIG failure ({kind}) for key {key}")
        if isinstance(exc, dns.exception.Timeout | TimeoutError):
            return RpzTimeout(operation, zone.to_text(), where, f"no answer within {self.timeout}s")
        if isinstance(exc, OSError):
            return RpzUnavailable(operation, zone.to_text(), where, f"cannot reach server ({kind})")
        return RpzServerError(operation, zone.to_text(), where, f"unexpected failure ({kind})")
