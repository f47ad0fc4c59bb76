"""A lab CMTS's SET log is read while its emulator appends to it: a record caught half-written is not
read yet, never a reason for the reader to fail."""

from __future__ import annotations

import json
from pathlib import Path

from lazaretto_lab.snmpd import LabCmts


def test_a_record_caught_half_written_is_read_once_whole(tmp_path: Path) -> None:
    # Given a SET log with one whole record and the first bytes of the next (a read takes no lock
    # against the emulator's append: it can see the file grown and the record's bytes not all there)
    cmts = LabCmts([], workdir=tmp_path)
    first = {"object": "cdxCmCpeResetNow", "mac": "00:02:8a:d3:7c:6e", "value": 1, "reset": True}
    second = {"object": "docsDevResetNow", "mac": "00:02:8a:d3:7c:6f", "value": 1, "reset": True}
    whole = json.dumps(first) + "\n"
    cmts.sets_log_path.write_text(whole + json.dumps(second)[:7])
    # Then the whole record is read, and the half-written one is not (yet)
    assert cmts.sets() == [first]
    # And once its append completed, it is read too
    cmts.sets_log_path.write_text(whole + json.dumps(second) + "\n")
    assert cmts.sets() == [first, second]
