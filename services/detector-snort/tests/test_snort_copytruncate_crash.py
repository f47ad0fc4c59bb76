"""A crash right after the broker confirmed, then a copy-truncate while down, then a restart: the lines
are read again from logrotate's copy and give the same observation ids, so nothing is reported twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from detector_snort.aggregate import Aggregator
from detector_snort.engine import SourceEngine
from detector_snort.pipeline import AlertPipeline, Source
from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import HEAD_BYTES, Checkpoint, FileTailer
from lazaretto_lab.suricata import SuricataOutput, readdress
from lazaretto_lab.testing import HeldStore

SUBSCRIBER = "100.64.0.10"
OUTSIDER = "192.0.2.7"
OLD = [f"100.64.0.{n}" for n in range(10, 20)]  # same length as SUBSCRIBER: offsets stay real
NEW = [f"100.64.0.{n}" for n in range(20, 25)]


class Ledger:
    """Policy's view: every delivery, and the first observation per message id."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []
        self.first: dict[str, AbuseObserved] = {}

    async def on_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        assert ctx.message_id == str(event.observation_id)
        self.deliveries.append(ctx.message_id)
        self.first.setdefault(ctx.message_id, event)


@contextlib.asynccontextmanager
async def tailing(engine: SourceEngine) -> AsyncIterator[asyncio.Task[None]]:
    """The engine reading its file from its position, as a task (publishing runs beside)."""
    tailer = FileTailer(engine.source.name, start=engine.position)

    async def tail() -> None:
        async with contextlib.aclosing(tailer.batches()) as batches:
            async for batch in batches:
                await engine.feed_lines(batch, tailer.checkpoint(batch[-1]))

    task = asyncio.create_task(tail())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run(engine: SourceEngine, until: Any) -> None:
    """Tail the engine's file from its position until `until()` holds."""
    async with tailing(engine) as task, asyncio.timeout(20):
        while not until():
            assert not task.done(), task
            await asyncio.sleep(0.01)


async def test_crash_after_confirm_then_copy_truncate_rereads_the_copy_with_the_same_ids(
    amqp_url: str,
    tmp_path: Path,
    suricata_scans: dict[str, SuricataOutput],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given policy's consumer, and detector-snort's engine on an EVE file, its state saved at the start
    ledger = Ledger()
    bus = Bus(amqp_url, "detector-snort")
    await bus.connect()
    bus.on(AbuseObserved, ledger.on_observed)
    await bus.consume(queue_name("test-policy"))
    published: list[str] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        await bus.publish(observation, message_id=message_id)
        published.append(message_id)

    eve = tmp_path / "eve.json"
    eve.touch()
    source = Source(str(eve), "eve", "ids-eve")
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]))

    def engine(store: CheckpointStore) -> SourceEngine:
        return SourceEngine(source, pipeline, Aggregator(60.0), store, publish, save_every=3600.0)

    one_alert = suricata_scans[SUBSCRIBER].eve_alert_lines()[:1]
    try:
        store = CheckpointStore(tmp_path / "state")
        first = engine(store)
        first.load()
        with eve.open("ab") as out:  # an outside host's alert was there before the detector started
            out.writelines(suricata_scans[OUTSIDER].eve_alert_lines()[:1])
        first.position = Checkpoint(os.stat(eve).st_ino, eve.stat().st_size, eve.read_bytes()[:HEAD_BYTES])
        first.save()
        await first.outbox.drained()  # on disk (the writer thread writes it)

        # When ten subscribers' alerts are published and confirmed, and the process dies right
        # after the confirms, before the position is saved
        with eve.open("ab") as out:
            out.writelines(line for ip in OLD for line in readdress(one_alert, SUBSCRIBER, ip))

        def lost(*args: object, **kwargs: object) -> int:
            return 0

        # a full document or a journal record, written in the loop or by the writer thread
        for write in ("save_state", "append_journal", "write_state", "write_journal"):
            monkeypatch.setattr(store, write, lost)
        await run(first, lambda: len(published) >= 10)
        await first.close()  # what a kill -9 would not do; every write is lost anyway
        assert len(published) == 10
        before_crash = set(published)

        # and while it is down logrotate copy-truncates the file and the sensor writes five more
        shutil.copyfile(eve, tmp_path / "eve.json.1")
        os.truncate(eve, 0)
        with eve.open("ab") as out:
            out.writelines(line for ip in NEW for line in readdress(one_alert, SUBSCRIBER, ip))

        # and detector-snort starts again
        published.clear()
        second = engine(CheckpointStore(tmp_path / "state"))
        await second.recover()
        await run(second, lambda: len(published) >= 15)

        # Then the ten lines really were read again (from the copy), with the ids they had
        assert len(published) == 15
        assert before_crash <= set(published)
        # And policy, deduplicating by id, has exactly one observation per alert line
        async with asyncio.timeout(20):
            while len(ledger.deliveries) < 25:
                await asyncio.sleep(0.02)
        assert len(ledger.first) == 15
        assert Counter(str(o.ip) for o in ledger.first.values()) == Counter(OLD + NEW)

        # And a third start reads nothing it would publish again (what it reads again after the
        # windows' last full save is folded, not published: it was confirmed)
        await second.close()
        published.clear()
        third = engine(CheckpointStore(tmp_path / "state"))
        await third.recover()
        size = eve.stat().st_size
        await run(third, lambda: third.replay_until is None and getattr(third.position, "offset", 0) == size)
        await asyncio.sleep(0.2)
        await third.close()
        assert published == []
    finally:
        await bus.close()


async def test_the_confirmed_position_is_saved_right_after_the_confirm(
    tmp_path: Path, suricata_scans: dict[str, SuricataOutput]
) -> None:
    # Given an engine that would save a position without observations only once an hour
    confirmed: list[str] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        confirmed.append(message_id)  # returns: the broker confirmed

    eve = tmp_path / "eve.json"
    with eve.open("ab") as out:
        out.writelines(suricata_scans[OUTSIDER].eve_alert_lines()[:1])
    source = Source(str(eve), "eve", "ids-eve")
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]))
    store = CheckpointStore(tmp_path / "state")
    engine = SourceEngine(source, pipeline, Aggregator(60.0), store, publish, save_every=3600.0)
    engine.load()
    engine.position = Checkpoint(os.stat(eve).st_ino, eve.stat().st_size, eve.read_bytes()[:HEAD_BYTES])
    engine.save()

    # When a subscriber's alert is read and its observation confirmed
    with eve.open("ab") as out:
        out.writelines(readdress(suricata_scans[SUBSCRIBER].eve_alert_lines()[:1], SUBSCRIBER, OLD[0]))
    await run(engine, lambda: bool(confirmed))

    # Then what a kill -9 leaves on disk has the line as handled at once (not within the hour):
    # a restart publishes nothing
    def handled_on_disk() -> bool:
        disk = CheckpointStore(tmp_path / "state")
        after_crash = SourceEngine(source, pipeline, Aggregator(60.0), disk, publish)
        after_crash.load()
        until = after_crash.replay_until
        return until is not None and until.offset == eve.stat().st_size and after_crash.pending == []

    async with asyncio.timeout(5):
        while not handled_on_disk():
            await asyncio.sleep(0.01)
    await engine.close()


async def test_nothing_read_from_a_file_is_published_before_its_first_bytes_are_on_disk(
    tmp_path: Path, suricata_scans: dict[str, SuricataOutput]
) -> None:
    # Given detector-snort's engine on an EVE file that was empty at its start (its position saved:
    # offset 0, no first bytes), its state written by a thread to a disk that is slow right now
    published: list[AbuseObserved] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        published.append(observation)

    eve = tmp_path / "eve.json"
    eve.touch()
    source = Source(str(eve), "eve", "ids-eve")
    pipeline = AlertPipeline(SubscriberRanges(["100.64.0.0/10"]))
    store = HeldStore(tmp_path / "state")
    store.release.set()
    engine = SourceEngine(source, pipeline, Aggregator(60.0), store, publish, save_every=3600.0)
    await engine.recover()
    engine.position = Checkpoint(os.stat(eve).st_ino, 0, b"")
    engine.save()
    await engine.outbox.drained()
    store.release.clear()
    store.writing.clear()
    # When the sensor writes its first alerts and the engine reads them
    with eve.open("ab") as out:
        out.writelines(suricata_scans[SUBSCRIBER].eve_alert_lines()[:5])
    try:
        async with tailing(engine):
            assert await asyncio.to_thread(store.writing.wait, 10)  # a save waits for the disk
            await asyncio.sleep(0.3)
            # Then nothing read from it is published while the file's first bytes are not on disk
            # (a crash now restarts from "offset 0 of an empty file": after a copy-truncate, the
            # copy's lines would never be read, and what had been published from them would stay)
            assert published == []
            # and once they are, its observation goes out
            store.release.set()
            async with asyncio.timeout(20):
                while not published:
                    await asyncio.sleep(0.01)
            assert {str(o.ip) for o in published} == {SUBSCRIBER}
    finally:
        store.release.set()
        await engine.close()
    restarted = SourceEngine(source, pipeline, Aggregator(60.0), CheckpointStore(tmp_path / "state"), publish)
    restarted.load()
    assert restarted.position is not None
    assert restarted.position.head == eve.read_bytes()[:HEAD_BYTES]
