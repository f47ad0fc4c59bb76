"""Every OID cmts-agent and the lab emulator use is the one the vendor's MIB assigns to the object
named beside it: the names are resolved from the MIBs' own `::= { parent n }` clauses (transcribed
mechanically into tests/data/mib_oid_assignments.txt, with the MIB files they come from), not from
our constants or the emulator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cmts_agent.vendors import CPE_COLUMNS, MIB_OBJECTS, STATUS_COLUMNS, reset_varbinds
from lazaretto_lab.snmpd import find_emulator

ASSIGNMENTS = Path(__file__).parent / "data" / "mib_oid_assignments.txt"
MAC = "00:02:8a:d3:7c:6e"
INDEX = "0.2.138.211.124.110"


def mib_tree() -> dict[str, str]:
    """name -> dotted OID, resolved from `name parent n` lines (root: iso = 1)."""
    parent_of: dict[str, tuple[str, int]] = {}
    for line in ASSIGNMENTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        _module, name, parent, number = line.split()
        assert name not in parent_of, f"{name} assigned twice"
        parent_of[name] = (parent, int(number))

    def resolve(name: str) -> str:
        if name == "iso":
            return "1"
        parent, number = parent_of[name]
        return f"{resolve(parent)}.{number}"

    return {name: resolve(name) for name in parent_of}


@pytest.fixture(scope="module")
def mib() -> dict[str, str]:
    return mib_tree()


@pytest.fixture(scope="module")
def emulator() -> ModuleType:
    path = find_emulator()
    spec = importlib.util.spec_from_file_location("cmts_emulator_under_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_transcription_resolves_to_well_known_oids(mib: dict[str, str]) -> None:
    # Anchors anyone can check against RFC 2578 / 3418 / 4546: a wrong transcription fails here.
    assert mib["enterprises"] == "1.3.6.1.4.1"
    assert mib["sysUpTime"] == "1.3.6.1.2.1.1.3"
    assert mib["docsIfMib"] == "1.3.6.1.2.1.10.127"


def test_every_oid_the_agent_uses_is_the_mib_object_it_names(mib: dict[str, str]) -> None:
    wrong = {name: (oid, mib.get(name)) for name, oid in MIB_OBJECTS.items() if mib.get(name) != oid}
    assert wrong == {}


def test_casa_reset_is_the_cm_cpe_reset_now_column(mib: dict[str, str]) -> None:
    # CASA-CABLE-CMCPE-MIB: casaCmtsCmCpeResetNow ::= { casaCmtsCmCpeEntry 7 }, entry { table 1 }
    assert mib["casaCmtsCmCpeResetNow"] == "1.3.6.1.4.1.20858.10.12.1.3.1.7"
    (value,) = reset_varbinds("casa-reset", MAC)
    assert value.oid == f"{mib['casaCmtsCmCpeResetNow']}.{INDEX}"
    assert value.oid == f"1.3.6.1.4.1.20858.10.12.1.3.1.7.{INDEX}"


@pytest.mark.parametrize(
    ("method", "objects"),
    [
        ("cisco-reset", [("cdxCmCpeResetNow", INDEX)]),
        ("cisco-delete", [("cdxCmCpeDeleteNow", INDEX)]),
        ("casa-reset", [("casaCmtsCmCpeResetNow", INDEX)]),
        ("arris-reset", [("cadMacResetCMMacAddress", "0")]),
        ("docsis3-cmreinit", [("docsIf3CmtsCmCtrlCmdMacAddr", "0"), ("docsIf3CmtsCmCtrlCmdCommit", "0")]),
        ("cm-reset", [("docsDevResetNow", "0")]),
    ],
)
def test_each_reset_method_sets_the_named_objects(
    mib: dict[str, str], method: str, objects: list[tuple[str, str]]
) -> None:
    assert [v.oid for v in reset_varbinds(method, MAC)] == [f"{mib[n]}.{i}" for n, i in objects]


def test_status_and_cpe_lookups_read_the_named_columns(mib: dict[str, str]) -> None:
    d2, d3 = STATUS_COLUMNS["docsis2"], STATUS_COLUMNS["docsis3"]
    assert (d2.mac, d2.ip, d2.value, d2.marker) == (
        mib["docsIfCmtsCmStatusMacAddress"],
        mib["docsIfCmtsCmStatusIpAddress"],
        mib["docsIfCmtsCmStatusValue"],
        mib["docsIfCmtsCmStatusValueLastUpdate"],
    )
    assert (d3.mac, d3.ip, d3.value, d3.marker) == (
        mib["docsIf3CmtsCmRegStatusMacAddr"],
        mib["docsIf3CmtsCmRegStatusIPv4Addr"],
        mib["docsIf3CmtsCmRegStatusValue"],
        mib["docsIf3CmtsCmRegStatusLastRegTime"],
    )
    for vendor, prefix in (("cisco", "cdxCmCpe"), ("casa", "casaCmtsCmCpe")):
        cols = CPE_COLUMNS[vendor]
        assert (cols.cm_of, cols.cpe_type, cols.cpe_ip) == (
            mib[f"{prefix}CmStatusIndex"],
            mib[f"{prefix}Type"],
            mib[f"{prefix}IpAddress"],
        )
    assert CPE_COLUMNS["arris"].cm_of == mib["cadIfCmtsMacCmMacAddr"]


def test_the_lab_emulator_serves_the_same_objects(mib: dict[str, str], emulator: ModuleType) -> None:
    def dotted(oid: tuple[int, ...]) -> str:
        return ".".join(map(str, oid))

    assert dotted(emulator.CDX_ENTRY) == mib["cdxCmCpeEntry"]
    assert dotted(emulator.CASA_ENTRY) == mib["casaCmtsCmCpeEntry"]
    assert dotted(emulator.STATUS_ENTRY) == mib["docsIfCmtsCmStatusEntry"]
    assert dotted(emulator.MAC_TO_CM_ENTRY) == mib["docsIfCmtsMacToCmEntry"]
    assert dotted(emulator.REG_STATUS_ENTRY) == mib["docsIf3CmtsCmRegStatusEntry"]
    assert dotted(emulator.CAD_RESET_CM) == mib["cadMacResetCMMacAddress"] + ".0"
    assert dotted(emulator.CAD_DELETE_MAC) == mib["cadMacDeleteMacAddress"] + ".0"
    assert dotted(emulator.CAD_MAC_TO_IP_ENTRY) == mib["cadIfCmtsMacToIpEntry"]
    assert dotted(emulator.CM_CTRL_MAC) == mib["docsIf3CmtsCmCtrlCmdMacAddr"] + ".0"
    assert dotted(emulator.CM_CTRL_COMMIT) == mib["docsIf3CmtsCmCtrlCmdCommit"] + ".0"
    assert dotted(emulator.DEV_RESET) == mib["docsDevResetNow"] + ".0"
    # the writable columns the emulator logs by name
    assert {dotted(oid): name for oid, name in emulator.OBJECT_NAMES.items()} == {
        mib[name]: name for name in ("cdxCmCpeResetNow", "cdxCmCpeDeleteNow", "casaCmtsCmCpeResetNow")
    }
