"""The outbox's document store that writes off the event loop: nothing handed over is lost or reordered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detector_smtp.offloop import OffLoopStore
from lazaretto_core.checkpoints import CheckpointStore


async def test_written_waits_for_the_newest_document_of_each_name(tmp_path: Path) -> None:
    store = OffLoopStore(tmp_path)
    # given many saves in a row (the loop never waits for the disk)
    for i in range(50):
        store.save_state("detector-smtp", {"state": {"n": i}, "pending": []})
        store.save_state("other", {"state": {"n": -i}, "pending": []})
    assert store.outstanding()
    # when the caller waits for them, then the newest of each is on disk, as the core store reads it
    await store.written()
    assert not store.outstanding()
    reader = CheckpointStore(tmp_path)
    assert reader.load_state("detector-smtp") == {"name": "detector-smtp", "state": {"n": 49}, "pending": []}
    assert reader.load_state("other") == {"name": "other", "state": {"n": -49}, "pending": []}


async def test_a_document_is_copied_when_handed_over(tmp_path: Path) -> None:
    store = OffLoopStore(tmp_path)
    state: dict[str, Any] = {"state": {"reported": {"100.64.0.1": 1.0}}, "pending": []}
    store.save_state("detector-smtp", state)
    state["state"]["reported"]["100.64.0.2"] = 2.0  # changed on the loop before the writer ran
    await store.written()
    saved = CheckpointStore(tmp_path).load_state("detector-smtp")
    assert saved is not None
    assert saved["state"]["reported"] == {"100.64.0.1": 1.0}
