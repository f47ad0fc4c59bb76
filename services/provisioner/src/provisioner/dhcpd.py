"""DHCP side of the garden on ISC dhcpd 4.4: quarantine class membership through OMAPI.

dhcpd's config declares `class "quarantine" { match hardware; }` with pools that allow or deny its
members (README, "ISC dhcpd"). A device joins the class through an OMAPI `subclass` object keyed by
0x01 + its MAC; dhcpd applies it to the device's next packet and appends it to its lease file, so a
restart keeps it. No config rewrite, no restart per case. pypureomapi has no subclass helper: the
messages are built here. pypureomapi is blocking: each call runs in a worker thread, one at a time,
on one persistent authenticated connection that is reopened after any error.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import pypureomapi as omapi

from lazaretto_core.contracts import normalize_mac

_HW_ETHERNET = b"\x01"
T = TypeVar("T")


class DhcpdError(RuntimeError):
    """An OMAPI call failed. Messages never carry the key's secret."""

    transient = False


class DhcpdUnavailable(DhcpdError):
    """dhcpd could not be reached or closed the connection: worth a retry."""

    transient = True


class DhcpdAuthError(DhcpdError):
    """dhcpd rejected the key (wrong secret, unknown key name or algorithm)."""


class _HmacSha256(omapi.OmapiAuthenticatorBase):
    # dhcpd accepts hmac-sha* keys over OMAPI; pypureomapi only ships HMAC-MD5.
    authlen = 32
    algorithm = b"hmac-sha256.SIG-ALG.REG.INT."

    def __init__(self, user: bytes, key: bytes) -> None:
        super().__init__()
        self.user = user
        self.key = binascii.a2b_base64(key)

    def auth_object(self) -> dict[bytes, bytes]:
        assert self.algorithm is not None
        return {b"name": self.user, b"algorithm": self.algorithm}

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.key, message, digestmod=hashlib.sha256).digest()


_AUTHENTICATORS: dict[str, Callable[[bytes, bytes], omapi.OmapiAuthenticatorBase]] = {
    "hmac-md5": omapi.OmapiHMACMD5Authenticator,
    "hmac-sha256": _HmacSha256,
}


class DhcpdHosts:
    """Quarantine class membership on one dhcpd, by MAC (the same calls `KeaHosts` offers)."""

    def __init__(
        self,
        host: str,
        port: int = 7911,
        *,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-md5",
        quarantine_class: str = "quarantine",
        timeout: float = 5.0,
    ) -> None:
        if algorithm not in _AUTHENTICATORS:
            raise ValueError(f"OMAPI key algorithm {algorithm!r} is not one of {sorted(_AUTHENTICATORS)}")
        try:
            binascii.a2b_base64(secret.encode())
        except binascii.Error:
            raise ValueError(f"OMAPI secret for key {key_name!r} is not valid base64") from None
        self.host, self.port, self.timeout = host, port, timeout
        self.quarantine_class = quarantine_class
        self._key_name, self._secret, self._algorithm = key_name.encode(), secret.encode(), algorithm
        self._conn: omapi.Omapi | None = None
        self._thread_lock = threading.Lock()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DhcpdHosts(host={self.host!r}, port={self.port}, key={self._key_name.decode()!r})"

    # -- the backend interface ---------------------------------------------------------------------

    async def quarantine_host(self, mac: str, context: dict[str, object] | None = None) -> None:
        """Put `mac` in the quarantine class. Idempotent. (dhcpd keeps no context: the desired state does.)"""
        await self.quarantine_many([mac])

    async def release_host(self, mac: str) -> bool:
        """Take `mac` out of the class; False if it was not in it."""
        return bool(await self.release_many([mac]))

    async def is_quarantined(self, mac: str) -> bool:
        return bool(await self.quarantined_among([mac]))

    async def quarantine_many(self, macs: Iterable[str]) -> None:
        """Add every MAC on one connection (one worker-thread hop for the whole batch)."""
        keys = [_hashstring(m) for m in macs]
        await self._call(lambda conn: self._add_all(conn, keys))

    async def release_many(self, macs: Iterable[str]) -> list[str]:
        """Remove every MAC; returns those that were members."""
        wanted = [normalize_mac(m) for m in macs]
        removed = await self._call(lambda conn: [self._delete(conn, _hashstring(m)) for m in wanted])
        return [mac for mac, was in zip(wanted, removed, strict=True) if was]

    async def quarantined_among(self, macs: Iterable[str]) -> set[str]:
        """Which of `macs` are members now. OMAPI can look objects up but not list them."""
        wanted = [normalize_mac(m) for m in macs]
        found = await self._call(
            lambda conn: [self._lookup(conn, _hashstring(m)) is not None for m in wanted]
        )
        return {mac for mac, present in zip(wanted, found, strict=True) if present}

    async def filtered_modem_config(self, mac: str, boot_file: str, next_server: str | None) -> None:
        """Household scope: a host declaration for the cable modem that hands it the filtered DOCSIS
        config file (`filename`, and `next-server` when set); host scope overrides the pool's and the
        subnet's. Idempotent: an existing declaration is replaced (the file name may have changed)."""
        statements = f'filename "{_quoted(boot_file)}";'
        if next_server is not None:
            statements += f" next-server {ipaddress.IPv4Address(next_server)};"
        name = _modem_host_name(mac)
        await self._call(lambda conn: self._put_host(conn, name, mac, statements))

    async def normal_modem_config(self, mac: str) -> bool:
        """Delete the modem's declaration: the conf's normal config file again. False if it had none."""
        name = _modem_host_name(mac)
        return await self._call(lambda conn: self._delete_host(conn, name))

    async def filtered_modems_among(self, macs: Iterable[str]) -> set[str]:
        """Which of the modems `macs` have the filtered config's declaration (look-ups: OMAPI cannot list)."""
        wanted = [normalize_mac(m) for m in macs]
        found = await self._call(
            lambda conn: [self._lookup_host(conn, _modem_host_name(m)) is not None for m in wanted]
        )
        return {mac for mac, present in zip(wanted, found, strict=True) if present}

    async def ping(self) -> None:
        """Connect and authenticate (readiness)."""
        await self._call(lambda conn: None)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._disconnect)

    # -- internals -------------------------------------------------------------------------------

    async def _call(self, work: Callable[[omapi.Omapi], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(self._run, work)

    def _run(self, work: Callable[[omapi.Omapi], T]) -> T:
        with self._thread_lock:
            if self._conn is not None:
                # A kept connection may have died with a dhcpd restart: every batch here is
                # idempotent, so one try on a fresh connection is safe.
                try:
                    return work(self._conn)
                except (OSError, omapi.OmapiError):
                    self._disconnect()
            try:
                return work(self._connect())
            except DhcpdError:
                raise
            except (OSError, omapi.OmapiError) as exc:
                # A broken connection is useless for the next call: start over then.
                self._disconnect()
                if isinstance(exc, omapi.OmapiError) and "authenticator" in str(exc):
                    raise DhcpdAuthError(f"OMAPI at {self.host}:{self.port}: {exc}") from None
                kind = "no answer in time" if isinstance(exc, socket.timeout) else type(exc).__name__
                raise DhcpdUnavailable(f"OMAPI at {self.host}:{self.port}: {kind}") from None

    def _subclass(self, key: bytes) -> omapi.OmapiMessage:
        message = omapi.OmapiMessage.open(b"subclass")
        message.obj += [(b"name", self.quarantine_class.encode()), (b"hashstring", key)]
        return message

    def _lookup(self, conn: omapi.Omapi, key: bytes) -> int | None:
        reply = conn.query_server(self._subclass(key))
        return int(reply.handle) if reply.opcode == omapi.OMAPI_OP_UPDATE else None

    def _add_all(self, conn: omapi.Omapi, keys: list[bytes]) -> None:
        for key in keys:
            self._add(conn, key)

    def _add(self, conn: omapi.Omapi, key: bytes) -> None:
        message = self._subclass(key)
        message.message += [(b"create", struct.pack("!I", 1)), (b"exclusive", struct.pack("!I", 1))]
        reply = conn.query_server(message)
        if reply.opcode == omapi.OMAPI_OP_UPDATE:
            return
        if self._lookup(conn, key) is not None:
            return  # already a member ("specified object already exists"): idempotent
        raise DhcpdError(f"OMAPI create subclass on {self.host}:{self.port}: {_status_text(reply)}")

    def _delete(self, conn: omapi.Omapi, key: bytes) -> bool:
        handle = self._lookup(conn, key)
        if handle is None:
            return False
        reply = conn.query_server(omapi.OmapiMessage.delete(handle))
        if reply.opcode != omapi.OMAPI_OP_STATUS:
            raise DhcpdError(f"OMAPI delete subclass on {self.host}:{self.port}: {_status_text(reply)}")
        return True

    def _host(self, name: str) -> omapi.OmapiMessage:
        message = omapi.OmapiMessage.open(b"host")
        message.obj.append((b"name", name.encode()))
        return message

    def _lookup_host(self, conn: omapi.Omapi, name: str) -> int | None:
        reply = conn.query_server(self._host(name))
        return int(reply.handle) if reply.opcode == omapi.OMAPI_OP_UPDATE else None

    def _put_host(self, conn: omapi.Omapi, name: str, mac: str, statements: str) -> None:
        self._delete_host(conn, name)
        message = self._host(name)
        message.message += [(b"create", struct.pack("!I", 1)), (b"exclusive", struct.pack("!I", 1))]
        message.obj += [
            (b"hardware-address", bytes.fromhex(normalize_mac(mac).replace(":", ""))),
            (b"hardware-type", struct.pack("!I", 1)),
            (b"statements", statements.encode()),
        ]
        reply = conn.query_server(message)
        if reply.opcode != omapi.OMAPI_OP_UPDATE:
            raise DhcpdError(f"OMAPI create host {name} on {self.host}:{self.port}: {_status_text(reply)}")

    def _delete_host(self, conn: omapi.Omapi, name: str) -> bool:
        handle = self._lookup_host(conn, name)
        if handle is None:
            return False
        reply = conn.query_server(omapi.OmapiMessage.delete(handle))
        if reply.opcode != omapi.OMAPI_OP_STATUS:
            raise DhcpdError(f"OMAPI delete host {name} on {self.host}:{self.port}: {_status_text(reply)}")
        return True

    def _connect(self) -> omapi.Omapi:
        if self._conn is not None:
            return self._conn
        # pypureomapi leaks its socket when connect() fails: find out with a socket of our own first.
        socket.create_connection((self.host, self.port), timeout=self.timeout).close()
        conn = omapi.Omapi(self.host, self.port, timeout=self.timeout)
        try:
            conn.initialize_authenticator(_AUTHENTICATORS[self._algorithm](self._key_name, self._secret))
        except omapi.OmapiError:
            conn.close()
            raise DhcpdAuthError(
                f"OMAPI at {self.host}:{self.port} rejected key {self._key_name.decode()}"
                f" ({self._algorithm}): wrong secret, unknown key or algorithm"
            ) from None
        self._conn = conn
        return conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _hashstring(mac: str) -> bytes:
    """The subclass key of `match hardware`: hardware type 1 (Ethernet) + the 6 MAC bytes."""
    return _HW_ETHERNET + bytes.fromhex(normalize_mac(mac).replace(":", ""))


def _status_text(reply: omapi.OmapiMessage) -> str:
    text = dict(reply.message).get(b"message", b"")
    return text.decode(errors="replace") if text else f"opcode {reply.opcode}"


def _modem_host_name(mac: str) -> str:
    """dhcpd writes host names unquoted to its leases file: only [a-z0-9-] survive its restart."""
    return "lz-cm-" + normalize_mac(mac).replace(":", "")


def _quoted(text: str) -> str:
    if any(c in text for c in '"\\;\n{}') or not text.isprintable():
        raise ValueError(f"not usable as a dhcpd file name: {text!r}")
    return text
