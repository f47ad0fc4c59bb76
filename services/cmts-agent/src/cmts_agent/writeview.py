"""Can the agent write to each CMTS? A SET that changes nothing, with the credentials resets use.

SNMPv2-MIB's sysLocation.0 (MAX-ACCESS read-write, RFC 3418) is read with the read credentials and
written back, unchanged, with the write credentials. An agent checks access before anything else
(RFC 3416 §4.2.5: noAccess comes first), so the answer tells whether the write view exists: accepted,
or noAccess/authorizationError (a read-only community or a user without a write view), a USM report
(RFC 3414: wrong write user or key), or silence (v2c agents drop a wrong community without a word).
"""

from __future__ import annotations

from dataclasses import dataclass

from .fleet import CmtsClient
from .resets import error_class
from .snmp import SnmpAccessDenied, SnmpAuthFailure, SnmpError, SnmpTimeout, UnknownModem
from .vendors import SYS_LOCATION, SetValue

OPERATION = "write-view check"
CONSEQUENCE = "modem resets on it will fail"


@dataclass(frozen=True)
class WriteCheck:
    cmts: str
    address: str
    ok: bool
    problem: str | None = None  # one line an operator can act on, when not ok
    error_class: str | None = None
    note: str | None = None  # access granted, but this agent could not show it with a real write


async def check_write_view(client: CmtsClient) -> WriteCheck:
    name, address = client.name, client.profile.address

    def failed(problem: str, exc: SnmpError | None = None) -> WriteCheck:
        return WriteCheck(name, address, False, problem, error_class(exc) if exc else None)

    try:
        (current,) = await client.snmp.get(OPERATION, [SYS_LOCATION])
    except SnmpError as exc:
        return failed(f"cannot read sysLocation.0 to write it back: {exc}", exc)
    if current is None:
        return failed("it has no sysLocation.0 to write back, so the write view cannot be checked")
    unchanged = SetValue(SYS_LOCATION, "octets", bytes(current).hex())
    try:
        await client.snmp.set(OPERATION, [unchanged])
    except SnmpAuthFailure as exc:
        return failed(f"the SNMPv3 write user is rejected ({exc}); {CONSEQUENCE}", exc)
    except SnmpAccessDenied as exc:
        return failed(
            f"SNMP SET refused: the write credentials have no write view ({exc}); {CONSEQUENCE}", exc
        )
    except SnmpTimeout as exc:
        return failed(
            f"reads are answered but a SET with the write credentials is not (a wrong write community is"
            f" dropped silently): {exc}; {CONSEQUENCE}",
            exc,
        )
    except UnknownModem as exc:
        if "notWritable" in str(exc):
            # Access was granted (noAccess is checked first); only this object is fixed in its config.
            return WriteCheck(name, address, True, note="sysLocation.0 is fixed in its configuration")
        return failed(f"SNMP SET failed: {exc}", exc)
    except SnmpError as exc:
        return failed(f"SNMP SET failed: {exc}", exc)
    return WriteCheck(name, address, True)
