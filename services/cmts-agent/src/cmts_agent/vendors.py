"""What each vendor's reset and look-ups look like on the wire: OIDs, index encodings, SET values.

Pure data and functions, no I/O: `reset_varbinds(method, mac)` is the SET PDU of one reset method,
`StatusColumns` the status table of a profile, `CpeColumns` its CPE -> CM table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from lazaretto_core.contracts import normalize_mac

# -- OIDs ----------------------------------------------------------------------------------------
# Numeric, because the DOCS and vendor MIBs are not bundled with pysnmp. Every OID is the one its MIB
# assigns to the named object (tests/test_cmts_mib_oids.py resolves each name from the MIBs' own
# `::= { parent n }` clauses, in tests/data/mib_oid_assignments.txt, and compares).

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"  # SNMPv2-MIB sysUpTime.0
# SNMPv2-MIB sysLocation.0 (read-write, RFC 3418): written back with its own value to check the write view.
SYS_LOCATION = "1.3.6.1.2.1.1.6.0"
# CISCO-DOCS-EXT-MIB cdxCmCpeEntry (INDEX cdxCmCpeMacAddress): .2 cdxCmCpeType, .3 cdxCmCpeIpAddress,
# .6 cdxCmCpeCmStatusIndex, .8 cdxCmCpeResetNow, .9 cdxCmCpeDeleteNow
CDX_CM_CPE_ENTRY = "1.3.6.1.4.1.9.9.116.1.3.1.1"
# CASA-CABLE-CMCPE-MIB casaCmtsCmCpeEntry (INDEX casaCmtsCmCpeMacAddress): the same column numbers
# as cdx up to .6, then .7 casaCmtsCmCpeResetNow. The entry is { casaCmtsCmCpeTable 1 } =
# 1.3.6.1.4.1.20858.10.12.1.3.1 (not ...1.3.1.1: that would be a column of the entry).
CASA_CM_CPE_ENTRY = "1.3.6.1.4.1.20858.10.12.1.3.1"
CM_STATUS_ENTRY = "1.3.6.1.2.1.10.127.1.3.3.1"  # DOCS-IF-MIB docsIfCmtsCmStatusEntry, INDEX Integer32
CM_PTR = "1.3.6.1.2.1.10.127.1.3.7.1.2"  # DOCS-IF-MIB docsIfCmtsCmPtr, INDEX MacAddress -> status index
REG_STATUS_ENTRY = "1.3.6.1.4.1.4491.2.1.20.1.3.1"  # DOCS-IF3-MIB docsIf3CmtsCmRegStatusEntry
CM_CTRL_MAC = "1.3.6.1.4.1.4491.2.1.20.1.27.1.0"  # DOCS-IF3-MIB docsIf3CmtsCmCtrlCmdMacAddr.0
CM_CTRL_COMMIT = "1.3.6.1.4.1.4491.2.1.20.1.27.5.0"  # DOCS-IF3-MIB docsIf3CmtsCmCtrlCmdCommit.0
CAD_RESET_CM = "1.3.6.1.4.1.4998.1.1.20.2.14.2.0"  # CADANT-CMTS-MAC-MIB cadMacResetCMMacAddress.0
CAD_CM_MAC_OF = "1.3.6.1.4.1.4998.1.1.20.2.21.1.3"  # CADANT-CMTS-MAC-MIB cadIfCmtsMacCmMacAddr
DOCS_DEV_RESET_NOW = "1.3.6.1.2.1.69.1.1.3.0"  # DOCS-CABLE-DEVICE-MIB docsDevResetNow.0, on the modem

# Every MIB object the agent reads or writes, by its MIB name (column or scalar, no instance).
MIB_OBJECTS: dict[str, str] = {
    "sysUpTime": SYS_UPTIME.removesuffix(".0"),
    "sysLocation": SYS_LOCATION.removesuffix(".0"),
    "cdxCmCpeEntry": CDX_CM_CPE_ENTRY,
    "cdxCmCpeType": f"{CDX_CM_CPE_ENTRY}.2",
    "cdxCmCpeIpAddress": f"{CDX_CM_CPE_ENTRY}.3",
    "cdxCmCpeCmStatusIndex": f"{CDX_CM_CPE_ENTRY}.6",
    "cdxCmCpeResetNow": f"{CDX_CM_CPE_ENTRY}.8",
    "cdxCmCpeDeleteNow": f"{CDX_CM_CPE_ENTRY}.9",
    "casaCmtsCmCpeEntry": CASA_CM_CPE_ENTRY,
    "casaCmtsCmCpeType": f"{CASA_CM_CPE_ENTRY}.2",
    "casaCmtsCmCpeIpAddress": f"{CASA_CM_CPE_ENTRY}.3",
    "casaCmtsCmCpeCmStatusIndex": f"{CASA_CM_CPE_ENTRY}.6",
    "casaCmtsCmCpeResetNow": f"{CASA_CM_CPE_ENTRY}.7",
    "docsIfCmtsCmStatusEntry": CM_STATUS_ENTRY,
    "docsIfCmtsCmStatusMacAddress": f"{CM_STATUS_ENTRY}.2",
    "docsIfCmtsCmStatusIpAddress": f"{CM_STATUS_ENTRY}.3",
    "docsIfCmtsCmStatusValue": f"{CM_STATUS_ENTRY}.9",
    "docsIfCmtsCmStatusValueLastUpdate": f"{CM_STATUS_ENTRY}.22",
    "docsIfCmtsCmPtr": CM_PTR,
    "docsIf3CmtsCmRegStatusEntry": REG_STATUS_ENTRY,
    "docsIf3CmtsCmRegStatusMacAddr": f"{REG_STATUS_ENTRY}.2",
    "docsIf3CmtsCmRegStatusIPv4Addr": f"{REG_STATUS_ENTRY}.5",
    "docsIf3CmtsCmRegStatusValue": f"{REG_STATUS_ENTRY}.6",
    "docsIf3CmtsCmRegStatusLastRegTime": f"{REG_STATUS_ENTRY}.14",
    "docsIf3CmtsCmCtrlCmdMacAddr": CM_CTRL_MAC.removesuffix(".0"),
    "docsIf3CmtsCmCtrlCmdCommit": CM_CTRL_COMMIT.removesuffix(".0"),
    "cadMacResetCMMacAddress": CAD_RESET_CM.removesuffix(".0"),
    "cadIfCmtsMacCmMacAddr": CAD_CM_MAC_OF,
    "docsDevResetNow": DOCS_DEV_RESET_NOW.removesuffix(".0"),
}

TRUTH_TRUE = 1
CM_REINIT = 2
TYPE_CM, TYPE_CPE = 1, 2


def mac_index(mac: str) -> str:
    """A MacAddress table index: six sub-ids, one per octet in decimal, no length prefix."""
    return ".".join(str(int(octet, 16)) for octet in normalize_mac(mac).split(":"))


def mac_hex(mac: str) -> str:
    """A MacAddress SET value as hex (6-octet OCTET STRING)."""
    return normalize_mac(mac).replace(":", "")


# -- reset methods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetValue:
    """One varbind of a SET: an INTEGER, or an OCTET STRING given as hex."""

    oid: str
    kind: Literal["integer", "octets"]
    value: int | str


@dataclass(frozen=True)
class ResetMethod:
    name: str  # the settings' name (cisco-reset ...)
    label: str  # what results and ModemResetCompleted.method say (names the MIB object)
    on_modem: bool  # sent to the modem's own address, not to the CMTS
    needs_cm_row: bool  # the CMTS must list the MAC as a CM in its cdx-like CPE table first


METHODS: dict[str, ResetMethod] = {
    "cisco-reset": ResetMethod("cisco-reset", "cisco-cdxCmCpeResetNow", False, True),
    "cisco-delete": ResetMethod("cisco-delete", "cisco-cdxCmCpeDeleteNow", False, True),
    "casa-reset": ResetMethod("casa-reset", "casa-casaCmtsCmCpeResetNow", False, True),
    "arris-reset": ResetMethod("arris-reset", "arris-cadMacResetCMMacAddress", False, False),
    "docsis3-cmreinit": ResetMethod(
        "docsis3-cmreinit", "docsis3-docsIf3CmtsCmCtrlCmd-cmReinit", False, False
    ),
    "cm-reset": ResetMethod("cm-reset", "cm-docsDevResetNow", True, False),
}
# The cdx-like table whose cm(1)/cpe(2) type guards a per-row reset (a CPE row would only flush a CPE).
TYPE_COLUMN = {
    "cisco-reset": CDX_CM_CPE_ENTRY,
    "cisco-delete": CDX_CM_CPE_ENTRY,
    "casa-reset": CASA_CM_CPE_ENTRY,
}


def reset_varbinds(method: str, mac: str) -> tuple[SetValue, ...]:
    """The varbinds of one SET PDU that resets `mac` by `method`."""
    idx = mac_index(mac)
    if method == "cisco-reset":
        return (SetValue(f"{CDX_CM_CPE_ENTRY}.8.{idx}", "integer", TRUTH_TRUE),)
    if method == "cisco-delete":
        return (SetValue(f"{CDX_CM_CPE_ENTRY}.9.{idx}", "integer", TRUTH_TRUE),)
    if method == "casa-reset":
        return (SetValue(f"{CASA_CM_CPE_ENTRY}.7.{idx}", "integer", TRUTH_TRUE),)
    if method == "arris-reset":
        return (SetValue(CAD_RESET_CM, "octets", mac_hex(mac)),)
    if method == "docsis3-cmreinit":
        # Both in one PDU: MAC first, then the command that acts on it.
        return (SetValue(CM_CTRL_MAC, "octets", mac_hex(mac)), SetValue(CM_CTRL_COMMIT, "integer", CM_REINIT))
    if method == "cm-reset":
        return (SetValue(DOCS_DEV_RESET_NOW, "integer", TRUTH_TRUE),)
    raise ValueError(f"unknown reset method {method!r}")


# -- status ---------------------------------------------------------------------------------------


class CmStatusValue(enum.IntEnum):
    """docsIfCmtsCmStatusValue (RFC 4546)."""

    OTHER = 1
    RANGING = 2
    RANGING_ABORTED = 3
    RANGING_COMPLETE = 4
    IP_COMPLETE = 5
    REGISTRATION_COMPLETE = 6
    ACCESS_DENIED = 7
    OPERATIONAL = 8  # "reserved, should not be used", yet some CMTSes report it for online modems
    REGISTERED_BPI_INITIALIZING = 9


class CmRegState(enum.IntEnum):
    """docsIf3CmtsCmRegStatusValue (CmtsCmRegState, DOCS-IF3-MIB)."""

    OTHER = 1
    INITIAL_RANGING = 2
    RANGING_AUTO_ADJ_COMPLETE = 4
    DHCPV4_COMPLETE = 5
    REGISTRATION_COMPLETE = 6
    OPERATIONAL = 8
    BPI_INIT = 9
    START_EAE = 10
    START_DHCPV4 = 11
    START_DHCPV6 = 12
    DHCPV6_COMPLETE = 13
    START_CONFIG_FILE_DOWNLOAD = 14
    CONFIG_FILE_DOWNLOAD_COMPLETE = 15
    START_REGISTRATION = 16
    FORWARDING_DISABLED = 17
    RF_MUTE_ALL = 18


ONLINE_D2 = frozenset({CmStatusValue.REGISTRATION_COMPLETE, CmStatusValue.OPERATIONAL})
ONLINE_D3 = frozenset({CmRegState.REGISTRATION_COMPLETE, CmRegState.OPERATIONAL})


@dataclass(frozen=True)
class StatusColumns:
    """Where a profile reads modem status: the table, its MAC, IPv4 and state columns, and the
    column that changes whenever the modem re-registers (`marker`): a modem back online with a new
    marker was reset, even if no poll caught it offline."""

    table: Literal["docsis2", "docsis3"]
    entry: str
    mac: str
    ip: str
    value: str
    marker: str
    marker_name: str

    def online(self, value: int) -> bool:
        return value in (ONLINE_D3 if self.table == "docsis3" else ONLINE_D2)

    def state_name(self, value: int) -> str:
        enum_type: type[enum.IntEnum] = CmRegState if self.table == "docsis3" else CmStatusValue
        try:
            return enum_type(value).name.lower()
        except ValueError:
            return f"unknown({value})"


STATUS_COLUMNS = {
    # docsIfCmtsCmStatusValueLastUpdate: "the value of sysUpTime when docsIfCmtsCmStatusValue was last
    # updated" (RFC 4546): any state change in between two polls moves it.
    "docsis2": StatusColumns(
        "docsis2",
        CM_STATUS_ENTRY,
        MIB_OBJECTS["docsIfCmtsCmStatusMacAddress"],
        MIB_OBJECTS["docsIfCmtsCmStatusIpAddress"],
        MIB_OBJECTS["docsIfCmtsCmStatusValue"],
        MIB_OBJECTS["docsIfCmtsCmStatusValueLastUpdate"],
        "docsIfCmtsCmStatusValueLastUpdate",
    ),
    # IPv4Addr (.5) is an InetAddressIPv4: a 4-byte OCTET STRING, not an IpAddress.
    # LastRegTime: "the last time the CM registered" (DateAndTime).
    "docsis3": StatusColumns(
        "docsis3",
        REG_STATUS_ENTRY,
        MIB_OBJECTS["docsIf3CmtsCmRegStatusMacAddr"],
        MIB_OBJECTS["docsIf3CmtsCmRegStatusIPv4Addr"],
        MIB_OBJECTS["docsIf3CmtsCmRegStatusValue"],
        MIB_OBJECTS["docsIf3CmtsCmRegStatusLastRegTime"],
        "docsIf3CmtsCmRegStatusLastRegTime",
    ),
}


@dataclass(frozen=True)
class CpeColumns:
    """CPE -> CM look-up of a vendor. cdx-like tables point at the CM's docsIfCmtsCmStatusIndex;
    Arris's cadIfCmtsMacToIpTable gives the CM MAC itself."""

    kind: Literal["status-index", "cm-mac"]
    cm_of: str  # column indexed by the CPE MAC
    cpe_type: str | None = None  # cm(1)/cpe(2), where the table has it
    cpe_ip: str | None = None


CPE_COLUMNS: dict[str, CpeColumns] = {
    "cisco": CpeColumns(
        "status-index", f"{CDX_CM_CPE_ENTRY}.6", f"{CDX_CM_CPE_ENTRY}.2", f"{CDX_CM_CPE_ENTRY}.3"
    ),
    "casa": CpeColumns(
        "status-index", f"{CASA_CM_CPE_ENTRY}.6", f"{CASA_CM_CPE_ENTRY}.2", f"{CASA_CM_CPE_ENTRY}.3"
    ),
    "arris": CpeColumns("cm-mac", CAD_CM_MAC_OF),
}
