"""SNMP adapter for CMTSes and modems (pysnmp 7, asyncio): GET, SET and walk one agent, classify failures.

The only module that imports pysnmp. Failures are raised as `SnmpError` subclasses whose messages
never contain a community or a v3 key. `reset_cm`, `cm_status` and `cm_for_cpe` are the Cisco /
DOCSIS 2 short-cuts; the vendor-neutral reset and inventory logic lives in resets.py and inventory.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pysnmp.entity.rfc3413.cmdgen import GetCommandGenerator, SetCommandGenerator
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_MD5,
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC128_SHA224,
    USM_AUTH_HMAC192_SHA256,
    USM_AUTH_HMAC256_SHA384,
    USM_AUTH_HMAC384_SHA512,
    USM_PRIV_CBC56_DES,
    USM_PRIV_CFB128_AES,
    USM_PRIV_CFB192_AES,
    USM_PRIV_CFB256_AES,
    CommunityData,
    ContextData,
    EndOfMibView,
    Integer,
    NoSuchInstance,
    NoSuchObject,
    ObjectIdentity,
    ObjectType,
    OctetString,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
)
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.proto import errind
from pysnmp.proto.error import StatusInformation
from pysnmp.proto.rfc1902 import ObjectName
from pysnmp.proto.rfc1905 import unSpecified

from lazaretto_core.contracts import normalize_mac

from .vendors import (
    CDX_CM_CPE_ENTRY,
    CM_PTR,
    CM_STATUS_ENTRY,
    ONLINE_D2,
    SYS_UPTIME,
    TRUTH_TRUE,
    TYPE_CM,
    CmStatusValue,
    SetValue,
    mac_index,
)

CDX_CM_CPE_TYPE = f"{CDX_CM_CPE_ENTRY}.2"  # cm(1) | cpe(2)
CDX_CM_CPE_CM_STATUS_INDEX = f"{CDX_CM_CPE_ENTRY}.6"  # -> docsIfCmtsCmStatusIndex of the (owning) CM
CDX_CM_CPE_RESET_NOW = f"{CDX_CM_CPE_ENTRY}.8"  # TruthValue, RW: SET true(1) resets the CM
CM_STATUS_MAC = f"{CM_STATUS_ENTRY}.2"
CM_STATUS_IP = f"{CM_STATUS_ENTRY}.3"
CM_STATUS_VALUE = f"{CM_STATUS_ENTRY}.9"
CDX_TYPE_CM = TYPE_CM
ONLINE_VALUES = ONLINE_D2


@dataclass(frozen=True)
class CmStatus:
    """What the CMTS says about one CM right now."""

    cm_mac: str
    index: int  # docsIfCmtsCmStatusIndex
    value: int  # docsIfCmtsCmStatusValue (an int: a CMTS may report values outside the enum)
    ip: str | None
    marker: str | None = None  # not read by this DOCSIS 2 short-cut (see Inventory.status)

    @property
    def online(self) -> bool:
        return self.value in ONLINE_VALUES

    @property
    def state(self) -> str:
        try:
            return CmStatusValue(self.value).name.lower()
        except ValueError:
            return f"unknown({self.value})"


# -- credentials and target ---------------------------------------------------------------------


@dataclass(frozen=True)
class V2cCredentials:
    community: str = field(repr=False)

    def secrets(self) -> tuple[str, ...]:
        return (self.community,)


AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "AES", "AES192", "AES256"]

_AUTH_PROTOCOLS: dict[str, Any] = {
    "MD5": USM_AUTH_HMAC96_MD5,
    "SHA": USM_AUTH_HMAC96_SHA,
    "SHA224": USM_AUTH_HMAC128_SHA224,
    "SHA256": USM_AUTH_HMAC192_SHA256,
    "SHA384": USM_AUTH_HMAC256_SHA384,
    "SHA512": USM_AUTH_HMAC384_SHA512,
}
_PRIV_PROTOCOLS: dict[str, Any] = {
    "DES": USM_PRIV_CBC56_DES,
    "AES": USM_PRIV_CFB128_AES,
    "AES192": USM_PRIV_CFB192_AES,
    "AES256": USM_PRIV_CFB256_AES,
}


@dataclass(frozen=True)
class V3Credentials:
    """SNMPv3 USM user, authPriv."""

    user: str
    auth_key: str = field(repr=False)
    priv_key: str = field(repr=False)
    auth_protocol: AuthProtocol = "SHA"
    priv_protocol: PrivProtocol = "AES"

    def secrets(self) -> tuple[str, ...]:
        return (self.auth_key, self.priv_key)


SnmpCredentials = V2cCredentials | V3Credentials


@dataclass(frozen=True)
class CmtsTarget:
    """One CMTS: where it is, how to read and write it, and how long to wait.

    Worst-case time per request is `timeout * (retries + 1)` seconds.
    """

    host: str
    read: SnmpCredentials
    write: SnmpCredentials
    port: int = 161
    timeout: float = 2.0
    retries: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def secrets(self) -> tuple[str, ...]:
        return (*self.read.secrets(), *self.write.secrets())


# -- errors -------------------------------------------------------------------------------------


class SnmpError(Exception):
    """An SNMP operation failed. `transient`: worth retrying later as is."""

    TRANSIENT: ClassVar[bool] = False

    def __init__(
        self, message: str, *, target: str = "", operation: str = "", transient: bool | None = None
    ) -> None:
        self.target = target
        self.operation = operation
        self.transient = self.TRANSIENT if transient is None else transient
        prefix = f"{operation} on {target}: " if operation or target else ""
        super().__init__(prefix + message)


class SnmpTimeout(SnmpError):
    """No (valid) answer in time: host down, port filtered, or a wrong v2c community (agents drop those)."""

    TRANSIENT = True


class SnmpAccessDenied(SnmpError):
    """The agent answered but refused: read-only community, no write view (noAccess, ...)."""


class SnmpAuthFailure(SnmpAccessDenied):
    """SNMPv3 authentication failed and the agent said so with a USM report (RFC 3414:
    usmStatsWrongDigests, usmStatsUnknownUserNames, usmStatsDecryptionErrors, ...): wrong key or user.
    (v2c has no such signal: an agent silently drops a wrong community, see SnmpWriteUnanswered.)"""


class SnmpWriteUnanswered(SnmpError):
    """The agent answers reads but never answered the SET (v2c: typically a wrong write community,
    which agents drop without a word), and the modem shows no sign of a reset. Retrying as is will
    not help: not transient, unlike an unreachable agent."""


class SnmpRejected(SnmpError):
    """The agent answered with an error status (wrongType, notWritable, genErr, ...)."""

    def __init__(self, message: str, *, status: str, target: str = "", operation: str = "") -> None:
        self.status = status
        transient = status in _TRANSIENT_STATUSES
        super().__init__(message, target=target, operation=operation, transient=transient)


class SnmpBadResponse(SnmpError):
    """The agent answered something that makes no sense for the object asked."""


class UnknownModem(SnmpError):
    """The CMTS does not know this MAC as a cable modem."""


def classify(exc: SnmpError) -> str:
    """A stable name for an SNMP failure: unknown_modem, snmp_timeout, snmp_access_denied, ..."""
    if isinstance(exc, UnknownModem):
        return "unknown_modem"
    if isinstance(exc, SnmpTimeout):
        return "snmp_timeout"
    if isinstance(exc, SnmpWriteUnanswered):
        return "snmp_write_unanswered"
    if isinstance(exc, SnmpAuthFailure):
        return "snmp_auth_failure"
    if isinstance(exc, SnmpAccessDenied):
        return "snmp_access_denied"
    if isinstance(exc, SnmpRejected):
        return "snmp_rejected"
    if isinstance(exc, SnmpBadResponse):
        return "snmp_bad_response"
    name = "".join("_" + c.lower() if c.isupper() else c for c in type(exc).__name__).strip("_")
    return name if name.startswith("snmp_") else "snmp_" + name.removeprefix("snmp_")


# errorStatus values (RFC 3416) by meaning
_ACCESS_STATUSES = frozenset({"noAccess", "authorizationError", "readOnly"})
_TRANSIENT_STATUSES = frozenset({"genErr", "resourceUnavailable", "commitFailed", "tooBig"})
_MISSING_STATUSES = frozenset({"noSuchName", "noCreation", "notWritable", "inconsistentName"})
# What the agent's USM reports (RFC 3414 usmStats*) turn into on the manager side: authentication.
_AUTH_INDICATIONS: tuple[type[Exception], ...] = (
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.WrongDigest,
    errind.DecryptionError,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.UnsupportedSecurityLevel,
    errind.UnknownEngineID,
    errind.NotInTimeWindow,
    errind.NoAuthentication,
    errind.NoEncryption,
)
_ACCESS_INDICATIONS: tuple[type[Exception], ...] = (
    errind.NotInView,
    errind.NoAccessEntry,
    errind.UnknownCommunityName,
)
_EXCEPTION_VALUES = (NoSuchObject, NoSuchInstance, EndOfMibView)

# GET and SET go to pysnmp's command generators with numeric OIDs as they are. pysnmp's get_cmd /
# set_cmd first look every OID up in its MIB view, which cost about a third of the CPU of a status
# poll (bench-cmts: the agent's CPU per reset is what limits its resets per second); we never want
# names, only the numbers we sent.
_GENERATORS = {"GET": GetCommandGenerator(), "SET": SetCommandGenerator()}
_TARGETS = CommandGeneratorLcdConfigurator()  # registers credentials + address once per engine
_CONTEXT = ContextData()


# -- MAC helpers --------------------------------------------------------------------------------


def _mac_from_octets(value: Any) -> str:
    raw = bytes(value.asOctets())
    if len(raw) != 6:
        raise ValueError(f"MacAddress of {len(raw)} octets")
    return ":".join(f"{b:02x}" for b in raw)


def mac_from_index(suffix: str) -> str:
    """The MAC encoded in a table index ('0.2.138.211.124.110' -> '00:02:8a:d3:7c:6e')."""
    parts = [int(p) for p in suffix.split(".") if p]
    if len(parts) != 6 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError(f"not a MacAddress index: {suffix!r}")
    return ":".join(f"{p:02x}" for p in parts)


def as_int(value: Any) -> int | None:
    """An INTEGER/Gauge/Unsigned value as int; None for anything else."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def as_mac(value: Any) -> str | None:
    """A MacAddress (6-octet OCTET STRING) as 'aa:bb:..'; None for anything else."""
    if value is None:
        return None
    try:
        return _mac_from_octets(value)
    except (AttributeError, TypeError, ValueError):
        return None


def as_ipv4(value: Any) -> str | None:
    """An IpAddress, or a 4-byte InetAddressIPv4 OCTET STRING, as dotted text; None for 0.0.0.0 or junk."""
    if value is None:
        return None
    try:
        raw = bytes(value.asOctets())
    except (AttributeError, TypeError, ValueError):
        return None
    if len(raw) != 4 or raw == b"\0\0\0\0":
        return None
    return ".".join(str(b) for b in raw)


# -- client -------------------------------------------------------------------------------------


class CmtsSnmp:
    """SNMP client for one CMTS (Cisco cdx profile for reset and CPE lookup, DOCS-IF-MIB for status).

    The pysnmp engine is created lazily on the running event loop (a pysnmp engine only works on the
    loop it first ran on). Call `close()` on that loop when done; after `close()` the client may be
    used again, on any loop. A call from a new loop without `close()` re-creates the engine, but the
    old one's sockets cannot be closed once their loop is gone (ResourceWarning).
    """

    def __init__(self, target: CmtsTarget) -> None:
        self.target = target
        self._engine: SnmpEngine | None = None
        self._transport: UdpTransportTarget | None = None
        # SETs go out once per call: pysnmp's own retransmission would repeat a SET whose answer was
        # lost, and a reset SET repeated is a second reset. The caller decides whether to send again.
        self._set_transport: UdpTransportTarget | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> CmtsSnmp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._engine is not None:
            # Closing must not mask the caller's own error; RuntimeError: "Event loop is closed".
            with contextlib.suppress(PySnmpError, OSError, RuntimeError):
                self._engine.close_dispatcher()
        self._engine = self._transport = self._set_transport = self._loop = None

    # -- operations ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise unless the CMTS answers a read now (sysUpTime.0); for readiness probes."""
        (uptime,) = await self._get("ping", [SYS_UPTIME])
        if uptime is None:
            raise SnmpBadResponse("no sysUpTime", target=self.target.address, operation="ping")

    async def reset_cm(self, cm_mac: str) -> None:
        """Reset a CM through the CMTS (Cisco cdxCmCpeResetNow = true). Raises UnknownModem if the
        CMTS does not list the MAC as a CM (a CPE row would only flush the CPE, not bounce the modem)."""
        mac = normalize_mac(cm_mac)
        op = f"reset_cm({mac})"
        (kind,) = await self._get(op, [f"{CDX_CM_CPE_TYPE}.{mac_index(mac)}"])
        if kind is None:
            raise UnknownModem(f"CMTS has no entry for {mac}", target=self.target.address, operation=op)
        if self._int(op, kind) != CDX_TYPE_CM:
            raise UnknownModem(
                f"{mac} is a CPE on this CMTS, not a cable modem", target=self.target.address, operation=op
            )
        await self._set_int(op, f"{CDX_CM_CPE_RESET_NOW}.{mac_index(mac)}", TRUTH_TRUE)

    async def cm_status(self, cm_mac: str) -> CmStatus | None:
        """docsIfCmtsCmStatus of a CM (via docsIfCmtsCmPtr); None if the CMTS does not know the MAC."""
        mac = normalize_mac(cm_mac)
        op = f"cm_status({mac})"
        (ptr,) = await self._get(op, [f"{CM_PTR}.{mac_index(mac)}"])
        if ptr is None:
            return None
        index = self._int(op, ptr)
        row_mac, ip, value = await self._get(
            op, [f"{CM_STATUS_MAC}.{index}", f"{CM_STATUS_IP}.{index}", f"{CM_STATUS_VALUE}.{index}"]
        )
        if value is None:
            return None  # the row went away between the two requests
        if row_mac is not None and self._mac(op, row_mac) != mac:
            raise SnmpBadResponse(
                f"docsIfCmtsCmPtr of {mac} points at status row {index} of another MAC",
                target=self.target.address,
                operation=op,
            )
        ip_text = None if ip is None else ip.prettyPrint()
        return CmStatus(mac, index, self._int(op, value), None if ip_text == "0.0.0.0" else ip_text)

    async def cm_for_cpe(self, cpe_mac: str) -> str | None:
        """MAC of the CM a CPE sits behind (cdxCmCpeCmStatusIndex -> docsIfCmtsCmStatusMacAddress);
        None if the CMTS does not know the CPE. A CM's own MAC maps to itself."""
        mac = normalize_mac(cpe_mac)
        op = f"cm_for_cpe({mac})"
        (ptr,) = await self._get(op, [f"{CDX_CM_CPE_CM_STATUS_INDEX}.{mac_index(mac)}"])
        if ptr is None:
            return None
        (cm_mac,) = await self._get(op, [f"{CM_STATUS_MAC}.{self._int(op, ptr)}"])
        return None if cm_mac is None else self._mac(op, cm_mac)

    # -- generic operations (vendor logic lives in resets.py / inventory.py) ---------------------

    async def get(self, op: str, oids: Sequence[str]) -> list[Any | None]:
        """GET with the read credentials; values in request order, None where the agent has no instance."""
        return await self._get(op, oids)

    async def set(self, op: str, values: Sequence[SetValue]) -> None:
        """One SET PDU with the write credentials (all varbinds applied together or none)."""
        varbinds = [(ObjectName(v.oid), _set_value(v)) for v in values]
        await self._request(op, "SET", self.target.write, varbinds)

    async def walk(self, op: str, column: str, *, max_rows: int = 200_000) -> list[tuple[str, Any]]:
        """Every instance under `column` as (index suffix, value), with GETBULK, read credentials."""
        prefix = column.strip(".") + "."
        rows: list[tuple[str, Any]] = []
        where = self.target.address
        try:
            engine, transport = await self._session()
            walker = bulk_walk_cmd(
                engine,
                self._auth(self.target.read),
                transport,
                ContextData(),
                0,
                50,
                ObjectType(ObjectIdentity(column)),
                lookupMib=False,
                lexicographicMode=False,  # else it walks on past the column, to the end of the agent
            )
            async for indication, status, index, varbinds in walker:
                # bulk_walk_cmd retries a timeout forever by itself: every error ends the walk here.
                if indication:
                    raise self._from_indication(op, "WALK", indication)
                if status:
                    raise self._from_status(op, "WALK", status, index, [])
                for oid, value in varbinds:
                    text = str(oid)
                    if not text.startswith(prefix) or isinstance(value, _EXCEPTION_VALUES):
                        continue
                    rows.append((text[len(prefix) :], value))
                if len(rows) > max_rows:
                    raise SnmpBadResponse(f"WALK: more than {max_rows} rows", target=where, operation=op)
        except StatusInformation as exc:
            raise self._from_indication(op, "WALK", _indication_of(exc)) from None
        except (PySnmpError, OSError) as exc:
            raise SnmpError(
                f"WALK: {type(exc).__name__}: {self._scrub(str(exc))}", target=where, operation=op
            ) from None
        return rows

    # -- plumbing --------------------------------------------------------------------------------

    async def _session(self, kind: str = "GET") -> tuple[SnmpEngine, UdpTransportTarget]:
        loop = asyncio.get_running_loop()
        if self._engine is None or self._loop is not loop:
            await self.close()
            self._engine = SnmpEngine()
            self._loop = loop
        t = self.target
        if kind == "SET":
            if self._set_transport is None:
                self._set_transport = await UdpTransportTarget.create(
                    (t.host, t.port), timeout=t.timeout, retries=0
                )
            return self._engine, self._set_transport
        if self._transport is None:
            self._transport = await UdpTransportTarget.create(
                (t.host, t.port), timeout=t.timeout, retries=t.retries
            )
        return self._engine, self._transport

    def _auth(self, creds: SnmpCredentials) -> CommunityData | UsmUserData:
        if isinstance(creds, V2cCredentials):
            # v2c is what most CMTSes are managed with; V3Credentials is there for those that can.
            return CommunityData(creds.community, mpModel=1)  # noqa: S508
        return UsmUserData(
            creds.user,
            creds.auth_key,
            creds.priv_key,
            authProtocol=_AUTH_PROTOCOLS[creds.auth_protocol],
            privProtocol=_PRIV_PROTOCOLS[creds.priv_protocol],
        )

    async def _get(self, op: str, oids: Sequence[str]) -> list[Any | None]:
        """GET; values in request order, None for noSuchObject/noSuchInstance/endOfMibView."""
        varbinds = [(ObjectName(oid), unSpecified) for oid in oids]
        result = await self._request(op, "GET", self.target.read, varbinds)
        return [None if isinstance(value, _EXCEPTION_VALUES) else value for _, value in result]

    async def _set_int(self, op: str, oid: str, value: int) -> None:
        await self._request(op, "SET", self.target.write, [(ObjectName(oid), Integer(value))])

    async def _request(
        self, op: str, kind: Literal["GET", "SET"], creds: SnmpCredentials, varbinds: list[Any]
    ) -> list[tuple[Any, Any]]:
        where = self.target.address
        # Safety net above pysnmp's own timer: a request must never hang the caller.
        attempts = 1 if kind == "SET" else self.target.retries + 1
        budget = self.target.timeout * attempts + 5.0
        try:
            engine, transport = await self._session(kind)
            async with asyncio.timeout(budget):
                indication, status, index, result = await self._send(engine, transport, kind, creds, varbinds)
        except TimeoutError:
            raise SnmpTimeout(
                f"{kind}: no response within {budget:.1f}s", target=where, operation=op
            ) from None
        except StatusInformation as exc:
            # pysnmp raises some errors (v3 crypto, USM) instead of returning them as errorIndication.
            raise self._from_indication(op, kind, _indication_of(exc)) from None
        except (PySnmpError, OSError) as exc:
            # `from None`: the original text might quote request details; ours is scrubbed.
            raise SnmpError(
                f"{kind}: {type(exc).__name__}: {self._scrub(str(exc))}", target=where, operation=op
            ) from None
        if indication:
            raise self._from_indication(op, kind, indication)
        if status:
            raise self._from_status(op, kind, status, index, varbinds)
        answered = [(oid, value) for oid, value in result]
        self._check_answers(op, kind, varbinds, answered)
        return answered

    async def _send(
        self,
        engine: SnmpEngine,
        transport: UdpTransportTarget,
        kind: Literal["GET", "SET"],
        creds: SnmpCredentials,
        varbinds: list[Any],
    ) -> tuple[Any, Any, Any, list[tuple[Any, Any]]]:
        """One request through pysnmp's command generator: (indication, status, index, varbinds)."""
        future: asyncio.Future[tuple[Any, Any, Any, list[tuple[Any, Any]]]]
        future = asyncio.get_running_loop().create_future()

        def answered(
            _engine: Any, _handle: Any, indication: Any, status: Any, index: Any, result: Any, _ctx: Any
        ) -> None:
            if not future.done():
                future.set_result((indication, status, index, list(result)))

        target, _ = _TARGETS.configure(engine, self._auth(creds), transport, _CONTEXT.contextName)
        _GENERATORS[kind].send_varbinds(
            engine, target, _CONTEXT.contextEngineId, _CONTEXT.contextName, varbinds, answered
        )
        return await future

    def _check_answers(self, op: str, kind: str, asked: list[Any], answered: list[tuple[Any, Any]]) -> None:
        """A GET or SET answer names the objects asked, in their order (RFC 3416): callers read the
        values by position, so a short, empty or reordered answer is a bad response, not data."""
        where = self.target.address
        if len(answered) != len(asked):
            raise SnmpBadResponse(
                f"{kind}: answered {len(answered)} objects for the {len(asked)} asked",
                target=where,
                operation=op,
            )
        for (want, _), (got, _) in zip(asked, answered, strict=True):
            if tuple(got) != tuple(want):
                raise SnmpBadResponse(
                    f"{kind}: answered {got} where {want} was asked", target=where, operation=op
                )

    def _from_indication(self, op: str, kind: str, indication: Any) -> SnmpError:
        where = self.target.address
        text = self._scrub(str(indication)) or type(indication).__name__
        if isinstance(indication, errind.RequestTimedOut):
            return SnmpTimeout(
                f"{kind}: no response after {1 if kind == 'SET' else self.target.retries + 1} attempt(s) of "
                f"{self.target.timeout}s (host down, or credentials the agent silently drops)",
                target=where,
                operation=op,
            )
        if isinstance(indication, _AUTH_INDICATIONS):
            return SnmpAuthFailure(
                f"{kind}: SNMPv3 authentication failed ({text}): check the user and its keys",
                target=where,
                operation=op,
            )
        if isinstance(indication, _ACCESS_INDICATIONS):
            return SnmpAccessDenied(f"{kind}: {text}", target=where, operation=op)
        return SnmpError(f"{kind}: {type(indication).__name__}: {text}", target=where, operation=op)

    def _from_status(self, op: str, kind: str, status: Any, index: Any, varbinds: list[Any]) -> SnmpError:
        where = self.target.address
        name = status.prettyPrint()
        position = int(index) if index else 0
        failed = str(varbinds[position - 1][0]) if 0 < position <= len(varbinds) else "?"
        message = f"{kind}: agent answered {name} for {failed}"
        if name in _ACCESS_STATUSES:
            return SnmpAccessDenied(message, target=where, operation=op)
        if name in _MISSING_STATUSES:
            # v1 noSuchName, or a SET on a row the CMTS does not (or no longer) have.
            return UnknownModem(message, target=where, operation=op)
        return SnmpRejected(message, status=name, target=where, operation=op)

    def _int(self, op: str, value: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SnmpBadResponse(
                f"expected an integer, got {type(value).__name__}", target=self.target.address, operation=op
            ) from None

    def _mac(self, op: str, value: Any) -> str:
        try:
            return _mac_from_octets(value)
        except (AttributeError, TypeError, ValueError) as exc:
            raise SnmpBadResponse(
                f"expected a MacAddress: {exc}", target=self.target.address, operation=op
            ) from None

    def _scrub(self, text: str) -> str:
        for secret in self.target.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text


def _set_value(value: SetValue) -> Any:
    if value.kind == "integer":
        return Integer(int(value.value))
    return OctetString(hexValue=str(value.value))


def _indication_of(exc: StatusInformation) -> Any:
    try:
        return exc["errorIndication"]
    except KeyError:
        return exc
