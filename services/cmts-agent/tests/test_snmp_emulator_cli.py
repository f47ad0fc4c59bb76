"""The lab CMTS seen through the net-snmp command-line tools: it must behave like a real agent."""

from __future__ import annotations

import os
import subprocess

from lazaretto_lab.snmpd import LabCmts

CDX = ".1.3.6.1.4.1.9.9.116.1.3.1.1"
CM_A_IDX = "0.2.138.211.124.110"  # 00:02:8a:d3:7c:6e
CPE_A_IDX = "2.0.0.0.0.1"  # 02:00:00:00:00:01


def snmp(cmts: LabCmts, tool: str, *args: str, community: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MIBS": "", "SNMP_PERSISTENT_DIR": str(cmts.persist_dir)}
    argv = [tool, "-v2c", "-c", community or cmts.rw_community, "-On", "-t", "2", "-r", "2"]
    return subprocess.run(
        [*argv, f"udp:{cmts.host}:{cmts.port}", *args], capture_output=True, text=True, env=env, timeout=60
    )


def oids(walk: str) -> list[tuple[int, ...]]:
    return [tuple(int(p) for p in line.split(" = ")[0].strip(".").split(".")) for line in walk.splitlines()]


def test_walk_is_in_lexicographic_order_and_stays_in_the_tables(lab_cmts: LabCmts) -> None:
    cdx = snmp(lab_cmts, "snmpwalk", CDX, community=lab_cmts.ro_community)
    docs = snmp(lab_cmts, "snmpbulkwalk", "-Cr7", ".1.3.6.1.2.1.10.127.1.3")

    assert cdx.returncode == 0, cdx.stderr
    assert docs.returncode == 0, docs.stderr
    # 3 rows (2 CMs, 1 CPE) x 7 columns; 2 status rows x 4 columns (with ValueLastUpdate) + 2 CmPtr
    assert len(oids(cdx.stdout)) == 21
    assert oids(cdx.stdout) == sorted(oids(cdx.stdout))
    assert len(oids(docs.stdout)) == 10
    assert oids(docs.stdout) == sorted(oids(docs.stdout))
    assert f"{CDX}.2.{CPE_A_IDX} = INTEGER: 2" in cdx.stdout  # cdxCmCpeType cpe(2)
    assert f"{CDX}.6.{CPE_A_IDX} = INTEGER: 1" in cdx.stdout  # CPE -> status index of its CM
    assert ".1.3.6.1.2.1.10.127.1.3.3.1.2.1 = Hex-STRING: 00 02 8A D3 7C 6E" in docs.stdout
    # docsIfCmtsCmStatusValueLastUpdate is a TimeStamp (TimeTicks): never changed since boot, 0
    assert ".1.3.6.1.2.1.10.127.1.3.3.1.22.1 = Timeticks: (0)" in docs.stdout


def test_set_errors_are_those_of_a_real_agent(lab_cmts: LabCmts) -> None:
    ro = lab_cmts.ro_community
    cases = [
        ("noAccess", snmp(lab_cmts, "snmpset", f"{CDX}.8.{CM_A_IDX}", "i", "1", community=ro)),
        ("notWritable", snmp(lab_cmts, "snmpset", f"{CDX}.8.1.2.3.4.5.6", "i", "1")),  # unknown MAC
        ("notWritable", snmp(lab_cmts, "snmpset", f"{CDX}.3.{CM_A_IDX}", "a", "10.9.9.9")),  # RO column
        ("wrongType", snmp(lab_cmts, "snmpset", f"{CDX}.8.{CM_A_IDX}", "s", "yes")),
        ("wrongValue", snmp(lab_cmts, "snmpset", f"{CDX}.8.{CM_A_IDX}", "i", "3")),
    ]
    for reason, done in cases:
        assert done.returncode != 0, reason
        assert f"Reason: {reason}" in done.stderr, (reason, done.stderr)
    assert lab_cmts.sets() == []


def test_accepted_sets_are_logged_and_reset_now_still_reads_false(lab_cmts: LabCmts) -> None:
    delete = snmp(lab_cmts, "snmpset", f"{CDX}.9.{CPE_A_IDX}", "i", "1")
    read_back = snmp(lab_cmts, "snmpget", f"{CDX}.9.{CPE_A_IDX}")
    missing = snmp(lab_cmts, "snmpget", f"{CDX}.8.9.9.9.9.9.9")

    assert delete.returncode == 0, delete.stderr
    assert read_back.stdout.strip().endswith("INTEGER: 2")  # TruthValue triggers read false(2)
    assert "No Such Instance" in missing.stdout
    (record,) = lab_cmts.sets()
    assert (record["object"], record["mac"], record["value"]) == ("cdxCmCpeDeleteNow", "02:00:00:00:00:01", 1)
    assert record["oid"] == f"{CDX}.9.{CPE_A_IDX}"
