"""ObservationOutbox: pending messages and input state saved as one document; sent only after the
broker's confirm; re-published with the same id after a crash (a real kill -9 and the real broker)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from lazaretto_core.bus import Bus, MessageContext, PublishError, queue_name
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import OBSERVATION_BATCH_MAX, AbuseObserved
from lazaretto_core.observation_outbox import (
    BATCH_MAX,
    IN_FLIGHT,
    OTHERS_IN_FLIGHT,
    PACE_SLACK,
    ObservationOutbox,
    Pace,
    StateDelta,
    deterministic_id,
)
from lazaretto_lab.testing import HeldStore

TIMEOUT = 20.0


def observation(n: int) -> AbuseObserved:
    return AbuseObserved.model_validate(
        AbuseObserved.example | {"observation_id": str(deterministic_id("test", "line", str(n))), "count": n}
    )


class Input:
    """A detector's input state: a read position and a counter."""

    def __init__(self) -> None:
        self.position = 0
        self.counted = 0

    def snapshot(self) -> dict[str, Any]:
        return {"position": self.position, "counted": self.counted}


class Ledger:
    """A consumer that deduplicates by message id, as policy does; remembers every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, AbuseObserved]] = []

    async def on_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        self.deliveries.append((ctx.message_id, event))

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.deliveries) < n:
                await asyncio.sleep(0.02)


def make_outbox(
    store: CheckpointStore,
    publish: Any,
    state: Input,
    *,
    save_every: float = 3600.0,
    max_pending: int = 10_000,
) -> ObservationOutbox[AbuseObserved]:
    return ObservationOutbox(
        store,
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        save_every=save_every,
        max_pending=max_pending,
    )


def bus_publish(bus: Bus) -> Any:
    async def publish(message: AbuseObserved, message_id: str) -> None:
        await bus.publish(message, message_id=message_id)

    return publish


def test_deterministic_ids_are_stable_and_distinct() -> None:
    assert deterministic_id("eve.json", "a", "1") == deterministic_id("eve.json", "a", "1")
    assert deterministic_id("eve.json", "a", "1") != deterministic_id("eve.json", "a", "2")
    assert deterministic_id("x") == uuid.uuid5(uuid.UUID("5b0f3c1e-8d4a-5e8f-9a51-1a2b3c4d5e6f"), "x")


async def test_staged_messages_survive_kill_9_and_are_published_once_with_their_id(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a process that staged two observations with its read position and was then killed -9
    # before publishing them
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from lazaretto_core.checkpoints import CheckpointStore
        from lazaretto_core.contracts import AbuseObserved
        from lazaretto_core.observation_outbox import ObservationOutbox, StateDelta, deterministic_id

        async def never(message, message_id):
            raise AssertionError("not published before the crash")

        outbox = ObservationOutbox(
            CheckpointStore(Path({str(tmp_path)!r})), "source-a", AbuseObserved, publish=never,
            ident=lambda o: str(o.observation_id), snapshot=lambda: {{"position": 1234, "counted": 7}},
        )
        messages = [
            AbuseObserved.model_validate(
                AbuseObserved.example
                | {{"observation_id": str(deterministic_id("test", "line", str(n))), "count": n}}
            )
            for n in (1, 2)
        ]
        outbox.stage(messages)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(crashed.communicate(), timeout=60)
    assert crashed.returncode == -signal.SIGKILL, stderr.decode()
    ledger = Ledger()
    bus = Bus(amqp_url, "test")
    await bus.connect()
    try:
        bus.on(AbuseObserved, ledger.on_observed)
        await bus.consume(queue_name("test-policy"))
        state = Input()
        outbox = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), state)

        # When the detector starts again
        saved = outbox.load()
        assert saved == {"position": 1234, "counted": 7}
        state.position, state.counted = saved["position"], saved["counted"]
        assert await outbox.flush() == 2

        # Then both reach the consumer once, with the observation id as the AMQP message id
        await ledger.wait(2)
        assert sorted(mid for mid, _ in ledger.deliveries) == sorted(
            str(observation(n).observation_id) for n in (1, 2)
        )
        assert all(mid == str(event.observation_id) for mid, event in ledger.deliveries)
        # And a further restart has nothing left to publish, and the position is kept
        again = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), Input())
        assert again.load() == {"position": 1234, "counted": 7}
        assert again.pending == []
        assert await again.flush() == 0
        await asyncio.sleep(0.3)
        assert len(ledger.deliveries) == 2
    finally:
        await bus.close()


async def test_position_is_saved_right_after_the_confirm_not_later(amqp_url: str, tmp_path: Path) -> None:
    # Given an outbox that would save an unchanged-input position only once an hour
    bus = Bus(amqp_url, "test")
    await bus.connect()
    ledger = Ledger()
    try:
        bus.on(AbuseObserved, ledger.on_observed)
        await bus.consume(queue_name("test-policy"))
        state = Input()
        outbox = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), state, save_every=3600.0)
        outbox.load()

        # When lines up to 500 yield an observation that the input would yield again, and it is confirmed
        state.position, state.counted = 500, 3
        outbox.add([observation(1)])
        assert CheckpointStore(tmp_path).load_state("source-a") is None  # nothing written before the confirm
        assert await outbox.flush() == 1

        # Then the saved document (what a kill -9 now leaves) holds the position and no pending message
        after_crash = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), Input())
        assert after_crash.load() == {"position": 500, "counted": 3}
        assert after_crash.pending == []
        await ledger.wait(1)
    finally:
        await bus.close()


async def test_unroutable_publish_stays_pending_until_the_broker_confirms(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a broker with no queue bound yet (a mandatory publish is returned, not confirmed)
    bus = Bus(amqp_url, "test", publish_tries=1)
    await bus.connect()
    ledger = Ledger()
    try:
        state = Input()
        outbox = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), state)
        state.position = 10
        outbox.stage([observation(1), observation(2)])

        # When the publish is refused
        with pytest.raises(PublishError):
            await outbox.flush()

        # Then both are still pending, on disk too
        assert [o.count for o in outbox.pending] == [1, 2]
        reloaded = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), Input())
        assert reloaded.load() == {"position": 10, "counted": 0}
        assert [o.count for o in reloaded.pending] == [1, 2]

        # And once a consumer's queue exists, they are sent and no longer pending
        bus.on(AbuseObserved, ledger.on_observed)
        await bus.consume(queue_name("test-policy"))
        assert await outbox.flush() == 2
        await ledger.wait(2)
        assert outbox.pending == []
        fresh = make_outbox(CheckpointStore(tmp_path), bus_publish(bus), Input())
        fresh.load()
        assert fresh.pending == []
    finally:
        await bus.close()


async def test_a_failed_publish_saves_the_confirmed_ones_as_sent(tmp_path: Path) -> None:
    # Given a broker that confirms the first message and refuses the second
    confirmed: list[str] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        if message.count == 2:
            raise PublishError("nacked")
        confirmed.append(message_id)

    state = Input()
    outbox = make_outbox(CheckpointStore(tmp_path, fsync=False), publish, state)
    outbox.stage([observation(1), observation(2)])

    # When the outbox is flushed
    with pytest.raises(PublishError):
        await outbox.flush()

    # Then only the refused one is pending, in memory and on disk
    assert confirmed == [str(observation(1).observation_id)]
    assert [o.count for o in outbox.pending] == [2]
    reloaded = make_outbox(CheckpointStore(tmp_path, fsync=False), publish, Input())
    reloaded.load()
    assert [o.count for o in reloaded.pending] == [2]


async def test_a_message_already_pending_is_not_queued_twice(tmp_path: Path) -> None:
    sent: list[str] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        sent.append(message_id)

    outbox = make_outbox(CheckpointStore(tmp_path, fsync=False), publish, Input())
    assert outbox.stage([observation(1)]) == 1
    assert outbox.add([observation(1), observation(2)]) == 1  # re-derived after a re-read: same id
    assert await outbox.flush() == 2
    assert sent == [str(observation(1).observation_id), str(observation(2).observation_id)]


async def test_a_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    async def publish(message: AbuseObserved, message_id: str) -> None:
        raise PublishError("broker away")

    outbox = make_outbox(CheckpointStore(tmp_path, fsync=False), publish, Input(), max_pending=3)
    outbox.stage([observation(n) for n in range(1, 6)])
    assert [o.count for o in outbox.pending] == [3, 4, 5]


def test_touch_saves_at_most_every_interval(tmp_path: Path) -> None:
    now = [0.0]
    state = Input()
    outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
        CheckpointStore(tmp_path, fsync=False),
        "source-a",
        AbuseObserved,
        publish=lambda m, i: asyncio.sleep(0),
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        save_every=1.0,
        clock=lambda: now[0],
    )
    state.position = 1
    outbox.touch()
    assert outbox.saves == 0
    now[0] = 1.5
    state.position = 2
    outbox.touch()
    assert outbox.saves == 1
    state.position = 3
    outbox.touch()
    assert outbox.saves == 1  # not due yet
    outbox.close()  # at shutdown the latest position is saved anyway
    saved = CheckpointStore(tmp_path).load_state("source-a")
    assert saved is not None
    assert (saved["state"], saved["pending"]) == ({"position": 3, "counted": 0}, [])


def test_an_unreadable_document_starts_afresh(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, fsync=False)
    store.save_state("source-a", {"state": {"position": 1}, "pending": [{"not": "an observation"}]})
    outbox = make_outbox(store, None, Input())
    assert outbox.load() is None
    assert outbox.pending == []


async def test_on_sent_marks_land_in_the_same_save_as_the_confirm(tmp_path: Path) -> None:
    # Given a detector that marks a client reported only once the broker confirmed its report
    reported: set[int] = set()

    async def publish(message: AbuseObserved, message_id: str) -> None:
        if message.count == 2:
            raise PublishError("nacked")

    outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
        CheckpointStore(tmp_path, fsync=False),
        "policy-server",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=lambda: {"reported": sorted(reported)},
        on_sent=lambda o: reported.add(o.count),
    )
    outbox.stage([observation(1), observation(2)])

    # When one is confirmed and the other refused
    with pytest.raises(PublishError):
        await outbox.flush()

    # Then only the confirmed one is marked, and the saved document says the same
    assert reported == {1}
    saved = CheckpointStore(tmp_path).load_state("policy-server")
    assert saved is not None
    assert saved["state"] == {"reported": [1]}
    assert [p["count"] for p in saved["pending"]] == [2]


class Windows:
    """A large keyed state (aggregation windows) that reports what changed since the last save."""

    def __init__(self) -> None:
        self.position = 0
        self.windows: dict[str, dict[str, int]] = {}
        self.changed: set[str] = set()
        self.closed: set[str] = set()

    def put(self, key: str, count: int) -> None:
        self.windows[key] = {"count": count}
        self.changed.add(key)
        self.closed.discard(key)

    def close(self, key: str) -> None:
        del self.windows[key]
        self.changed.discard(key)
        self.closed.add(key)

    def snapshot(self) -> dict[str, Any]:
        return {"position": self.position, "windows": dict(self.windows)}

    def delta(self) -> StateDelta:
        change = StateDelta(
            state={"position": self.position},
            set={"windows": {k: self.windows[k] for k in self.changed}} if self.changed else {},
            delete={"windows": sorted(self.closed)} if self.closed else {},
        )
        self.changed, self.closed = set(), set()
        return change


def journal_in(directory: Path) -> Path:
    return next(p for p in directory.iterdir() if p.name.endswith(".journal"))


def journaled(store: CheckpointStore, state: Windows, publish: Any) -> ObservationOutbox[AbuseObserved]:
    return ObservationOutbox(
        store,
        "big-state",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        delta=state.delta,
        save_every=3600.0,
    )


async def test_a_journaled_state_is_rebuilt_after_a_crash_and_a_torn_record_ignored(tmp_path: Path) -> None:
    sent: list[str] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        sent.append(message_id)

    # Given a state of many windows, saved in full once and then as small journal records
    store = CheckpointStore(tmp_path, fsync=False)
    state = Windows()
    outbox = journaled(store, state, publish)
    outbox.load()
    for n in range(1000):
        state.put(f"w{n}", 1)
    outbox.save()  # the first save is a full document
    state.position = 10
    state.put("w1", 2)
    state.close("w2")
    outbox.stage([observation(1), observation(2)])
    state.position = 20
    state.put("w3", 5)
    outbox.add([observation(3)])
    await outbox.flush()  # 1, 2, 3 confirmed: saved as sent
    state.position = 30
    state.put("w4", 7)
    outbox.stage([observation(4)])
    journal = journal_in(tmp_path)
    assert journal.stat().st_size < 2_000  # records hold what changed, not the 1,000 windows

    # When the process dies (no close) and starts again
    reloaded = Windows()
    again = journaled(CheckpointStore(tmp_path, fsync=False), reloaded, publish)
    saved = again.load()

    # Then the state and the pending messages are the last saved ones
    assert saved == state.snapshot()
    assert [o.count for o in again.pending] == [4]

    # And a record torn by a crash mid-append counts as never written
    with journal.open("ab") as out:
        out.write(b'{"seq":99,"state":{"position":9')
    torn = journaled(CheckpointStore(tmp_path, fsync=False), Windows(), publish)
    assert torn.load() == state.snapshot()


async def test_records_already_in_a_full_document_are_not_applied_again(tmp_path: Path) -> None:
    async def publish(message: AbuseObserved, message_id: str) -> None:
        return None

    # Given journal records, then a full document written but the journal not yet emptied (a crash)
    store = CheckpointStore(tmp_path, fsync=False)
    state = Windows()
    outbox = journaled(store, state, publish)
    outbox.load()
    state.put("a", 1)
    outbox.save()
    state.put("b", 1)
    outbox.save()  # a journal record: sets b
    monkey_journal = store.read_journal("big-state")
    assert len(monkey_journal) == 1
    state.close("b")
    outbox._save_full()  # the document no longer has b ...
    store.append_journal("big-state", monkey_journal[0])  # ... but the old record is still there

    # When it is loaded
    loaded = journaled(CheckpointStore(tmp_path, fsync=False), Windows(), publish).load()

    # Then the older record is not applied on top of the newer document
    assert loaded == {"position": 0, "windows": {"a": {"count": 1}}}


async def test_a_newer_revision_replaces_the_pending_one_even_while_the_older_is_in_flight(
    tmp_path: Path,
) -> None:
    # Given an outbox whose messages are revisions of running evidence (same id, higher revision)
    sent: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def publish(message: AbuseObserved, message_id: str) -> None:
        await gate.wait()
        sent.append((message_id, message.revision))

    def revision(n: int) -> AbuseObserved:
        return AbuseObserved.model_validate(AbuseObserved.example | {"revision": n, "count": n + 1})

    outbox = ObservationOutbox(
        CheckpointStore(tmp_path, fsync=False),
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=Input().snapshot,
        supersedes=lambda new, old: new.revision > old.revision,
    )
    # When revision 1 is queued over revision 0 (an older one never replaces a newer one)
    outbox.add([revision(0)])
    assert outbox.add([revision(1), revision(0)]) == 1
    assert [o.revision for o in outbox.pending] == [1]
    # and revision 2 arrives while revision 1 awaits its confirm
    flushing = asyncio.create_task(outbox.flush())
    await asyncio.sleep(0.01)
    outbox.add([revision(2)])
    gate.set()
    await flushing
    # Then both were published in order, and nothing stays pending: revision 2 was not dropped by
    # revision 1's confirm
    key = str(revision(0).observation_id)
    assert sent == [(key, 1), (key, 2)]
    assert outbox.pending == []
    reloaded = make_outbox(CheckpointStore(tmp_path, fsync=False), publish, Input())
    reloaded.load()
    assert reloaded.pending == []


async def test_urgent_messages_are_published_before_older_ones(tmp_path: Path) -> None:
    # Given 600 later revisions queued (more than one round of publishes) and then one urgent message
    sent: list[int] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        sent.append(message.count)

    outbox = ObservationOutbox(
        CheckpointStore(tmp_path, fsync=False),
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=Input().snapshot,
        urgent=lambda o: o.count == 1,
    )
    outbox.add([observation(n) for n in range(2, 602)])
    outbox.add([observation(1)])
    # When the outbox publishes
    assert await outbox.flush() == 601
    # Then the urgent one went out in the first round, ahead of the others, and nothing is left
    assert sent.index(1) < 256
    assert sorted(sent) == list(range(1, 602))
    assert len(outbox) == 0


async def test_a_slow_confirm_does_not_hold_back_the_messages_after_it(tmp_path: Path) -> None:
    # Given more pending messages than may await their confirm at once, and a broker that confirms
    # the first one only after every other one was confirmed
    others_confirmed = asyncio.Event()
    confirmed: list[str] = []
    total = IN_FLIGHT + 44

    async def publish(message: AbuseObserved, message_id: str) -> None:
        if message.count == 1:
            await others_confirmed.wait()
        confirmed.append(message_id)
        if len(confirmed) == total - 1:
            others_confirmed.set()

    outbox = make_outbox(CheckpointStore(tmp_path), publish, Input())
    outbox.add(observation(n) for n in range(1, total + 1))

    # When it flushes (in rounds, the first round would wait for that confirm for ever)
    async with asyncio.timeout(TIMEOUT):
        sent = await outbox.flush()

    # Then each confirm made room for the next message: all went out, the slow one last
    assert sent == total
    assert confirmed[-1] == str(observation(1).observation_id)
    assert len(outbox) == 0


def offloaded_on_held_disk(
    tmp_path: Path,
) -> tuple[ObservationOutbox[AbuseObserved], HeldStore, Input, list[str]]:
    """An outbox whose saves a thread writes to a `HeldStore`; the ids it published, in order."""
    published: list[str] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        published.append(message_id)

    store = HeldStore(tmp_path, hold=TIMEOUT)
    state = Input()
    outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
        store,
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        offload=True,
    )
    return outbox, store, state, published


async def test_with_offload_staged_messages_wait_for_their_save_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    # Given an outbox whose saves are written by a thread, on a disk that is slow right now
    outbox, store, state, published = offloaded_on_held_disk(tmp_path)

    # When a message that cannot be derived again is staged (write-ahead), one that can is added,
    # and they are flushed
    state.position = 7
    outbox.stage([observation(1)], full=True)
    outbox.add([observation(2)])
    flushing = asyncio.create_task(outbox.flush())
    await asyncio.to_thread(store.writing.wait, TIMEOUT)

    # Then the loop goes on while the thread writes: the one derived again is published, the staged
    # one not while its save is not on disk
    async with asyncio.timeout(TIMEOUT):
        while not published:
            await asyncio.sleep(0.01)
    assert published == [str(observation(2).observation_id)]
    assert not flushing.done()

    # And once the disk is done, it is published and the saved document holds what was staged
    store.release.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 2
        await outbox.drained()
    assert published == [str(observation(2).observation_id), str(observation(1).observation_id)]
    saved = CheckpointStore(tmp_path).load_state("source-a")
    assert saved is not None
    assert saved["state"]["position"] == 7


async def test_with_offload_a_message_added_while_a_staged_one_waits_for_the_disk_goes_out_at_once(
    tmp_path: Path,
) -> None:
    # Given an outbox whose saves are written by a thread, on a disk that is slow right now (a full
    # document's fsync behind another process's heavy writes), flushing a staged message
    outbox, store, _, published = offloaded_on_held_disk(tmp_path)
    outbox.stage([observation(1)], full=True)
    flushing = asyncio.create_task(outbox.flush())
    await asyncio.to_thread(store.writing.wait, TIMEOUT)
    await asyncio.sleep(0.05)  # the flush has nothing else to publish: it waits for the disk

    # When a message derived from input read meanwhile is added
    outbox.add([observation(2)])

    # Then it is published while the disk still writes, and the staged one once that is done
    async with asyncio.timeout(TIMEOUT):
        while not published:
            await asyncio.sleep(0.01)
    assert published == [str(observation(2).observation_id)]
    assert not flushing.done()
    store.release.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 2
        await outbox.drained()
    assert published == [str(observation(2).observation_id), str(observation(1).observation_id)]


async def test_with_offload_a_failed_write_is_saved_again_in_full_before_publishing(
    tmp_path: Path,
) -> None:
    # Given an outbox writing its saves in a thread, and a disk that fails once
    published: list[str] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        published.append(message_id)

    class FailingOnce(CheckpointStore):
        failures = 1

        def write_state(self, name: str, document: bytes) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("disk full")
            super().write_state(name, document)

    state = Input()
    outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
        FailingOnce(tmp_path),
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        offload=True,
    )

    # When a staged message's write-ahead save fails
    outbox.stage([observation(1)], full=True)
    with pytest.raises(OSError, match="write-ahead save failed"):
        await outbox.flush()
    assert published == []

    # Then the next flush saves everything again first, and publishes once that is on disk
    assert await outbox.flush() == 1
    await outbox.drained()
    assert published == [str(observation(1).observation_id)]
    saved = CheckpointStore(tmp_path).load_state("source-a")
    assert saved is not None
    assert saved["pending"] == []


async def test_an_urgent_message_goes_out_at_once_past_later_revisions_awaiting_their_confirm(
    tmp_path: Path,
) -> None:
    # Given an outbox that puts first revisions ahead, and a broker that does not confirm the later
    # revisions it was sent (slow), with many of them pending
    awaiting: list[str] = []
    published: list[str] = []
    stuck = asyncio.Event()

    async def publish(message: AbuseObserved, message_id: str) -> None:
        if message.revision > 0:
            awaiting.append(message_id)
            await stuck.wait()
        published.append(message_id)

    state = Input()
    outbox: ObservationOutbox[AbuseObserved] = ObservationOutbox(
        CheckpointStore(tmp_path),
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=state.snapshot,
        urgent=lambda o: o.revision == 0,
    )
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1, 201))
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while len(awaiting) < OTHERS_IN_FLIGHT:
            await asyncio.sleep(0.01)

    # When a new address's first revision is queued while the flush waits for those confirms
    first = observation(500)
    outbox.add([first])

    # Then it is published at once (no confirm needed to make room), and no more later revisions
    # await their confirm than the few allowed
    async with asyncio.timeout(TIMEOUT):
        while not published:
            await asyncio.sleep(0.01)
    assert published == [str(first.observation_id)]
    assert len(awaiting) == OTHERS_IN_FLIGHT
    stuck.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 201


def paced_outbox(
    tmp_path: Path, publish: Any, pace: Pace, clock: Callable[[], float] = time.monotonic
) -> ObservationOutbox[AbuseObserved]:
    """First revisions urgent, the others paced."""
    return ObservationOutbox(
        CheckpointStore(tmp_path),
        "source-a",
        AbuseObserved,
        publish=publish,
        ident=lambda o: str(o.observation_id),
        snapshot=Input().snapshot,
        urgent=lambda o: o.revision == 0,
        pace=pace,
        clock=clock,
    )


def test_the_pace_follows_the_backlog_between_its_floor_and_no_pacing() -> None:
    pace = Pace(per_s=100, within=10, unpaced_above=2_000)
    assert pace.interval(1) == pytest.approx(0.01)  # its floor: 100 a second
    assert pace.interval(1_000) == pytest.approx(0.01)  # 1,000 within 10 s
    assert pace.interval(1_500) == pytest.approx(1 / 150)
    assert pace.interval(2_000) == 0.0  # beyond: as fast as the broker confirms


async def test_paced_messages_go_out_spread_over_time_and_an_urgent_one_past_them(tmp_path: Path) -> None:
    # Given an outbox pacing its later revisions at 50 a second, and a broker that confirms at once
    published: list[tuple[float, AbuseObserved]] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        published.append((time.monotonic(), message))

    outbox = paced_outbox(tmp_path, publish, Pace(per_s=50, within=100))
    # When 40 later revisions are queued, and a first revision a little later
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1, 41))
    started = time.monotonic()
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while len(published) < 5:
            await asyncio.sleep(0.005)
    first = observation(500)
    outbox.add([first])
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 41
    # Then the later revisions went out no faster than the pace (a burst of PACE_SLACK's worth at
    # most: 40 at once took a millisecond before), and the first revision at once, ahead of most
    later = [at for at, message in published if message.revision]
    assert later[-1] - started >= (40 - 50 * PACE_SLACK - 1) / 50
    assert all(
        sum(1 for t in later if at <= t < at + 0.2) <= 0.2 * 50 + 50 * PACE_SLACK + 1 for at in later
    ), "more than the pace allows went out within 0.2 s"
    order = [message for _, message in published]
    assert sum(1 for message in order[order.index(first) :] if message.revision) >= 20


async def test_a_backlog_of_paced_messages_goes_faster_the_larger_it_is(tmp_path: Path) -> None:
    # Given an outbox pacing its later revisions at 2 a second at least, a backlog within 0.2 s
    published: list[float] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        published.append(time.monotonic())

    outbox = paced_outbox(tmp_path, publish, Pace(per_s=2, within=0.2, unpaced_above=10_000))
    # When 200 are queued at once
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1, 201))
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT):
        assert await outbox.flush() == 200
    # Then they went out in seconds (at 2 a second they would take 100 s), slowing as the backlog
    # shrank: the first half sooner than the second
    assert published[-1] - started < 8
    assert published[99] - started < published[-1] - published[99]


async def test_a_flush_waiting_for_the_pace_ends_when_cancelled(tmp_path: Path) -> None:
    # Given a flush waiting to send paced messages (one a second)
    async def publish(message: AbuseObserved, message_id: str) -> None:
        return None

    outbox = paced_outbox(tmp_path, publish, Pace(per_s=1, within=1_000))
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1, 11))
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while len(outbox) == 10:  # until the first went: the flush now waits for the pace
            await asyncio.sleep(0.01)
    # When it is cancelled once (the service stops), then it ends at once, the rest still pending
    flushing.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await flushing
    assert 0 < len(outbox) < 10


async def test_a_paced_flush_waiting_for_confirms_does_not_spin(tmp_path: Path) -> None:
    # Given a broker that does not confirm first revisions yet, as many in flight as allowed, and
    # paced revisions queued behind them
    stuck = asyncio.Event()
    looked = 0

    def clock() -> float:
        nonlocal looked
        looked += 1
        return time.monotonic()

    began = 0

    async def publish(message: AbuseObserved, message_id: str) -> None:
        nonlocal began
        began += 1
        if message.revision == 0:
            await stuck.wait()

    outbox = paced_outbox(tmp_path, publish, Pace(per_s=1_000), clock)
    outbox.add(observation(n) for n in range(1, IN_FLIGHT + 11))
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1_000, 1_010))
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while began < IN_FLIGHT:  # it sent what it may
            await asyncio.sleep(0.01)
    # When the flush waits for their confirms for 0.3 s
    looked = 0
    await asyncio.sleep(0.3)
    # Then it looked at the clock a few times at most, not in a loop (a wait of 0 with confirms
    # pending: tens of thousands of times)
    assert looked < 10, looked
    stuck.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == IN_FLIGHT + 20


class Broker:
    """A fake broker behind `publish` and `publish_batch`: what each publish carried, in order."""

    def __init__(self) -> None:
        self.publishes: list[list[AbuseObserved]] = []  # one per publish; a single one is a list of 1
        self.singles = 0
        self.gate = asyncio.Event()  # confirms wait for it
        self.gate.set()
        self.single_gate = asyncio.Event()  # and those of single messages for this one too
        self.single_gate.set()
        self.refuse = 0  # batch publishes still to refuse

    async def publish(self, message: AbuseObserved, message_id: str) -> None:
        assert message_id == str(message.observation_id)
        self.singles += 1
        self.publishes.append([message])
        await self.gate.wait()
        await self.single_gate.wait()

    async def publish_batch(self, messages: list[AbuseObserved]) -> None:
        assert len(messages) > 1, "a group of one goes through publish"
        self.publishes.append(list(messages))
        await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise PublishError("nacked")

    @property
    def batches(self) -> list[list[AbuseObserved]]:
        return [carried for carried in self.publishes if len(carried) > 1]


def batching_outbox(
    store: CheckpointStore, broker: Broker, sent: list[AbuseObserved], **options: Any
) -> ObservationOutbox[AbuseObserved]:
    return ObservationOutbox(
        store,
        "source-a",
        AbuseObserved,
        publish=broker.publish,
        publish_batch=broker.publish_batch,
        ident=lambda o: str(o.observation_id),
        snapshot=Input().snapshot,
        on_sent=sent.append,
        **options,
    )


def test_the_default_batch_fits_the_batch_contract() -> None:
    assert 1 < BATCH_MAX <= OBSERVATION_BATCH_MAX


async def test_a_burst_goes_out_in_batches_each_member_confirmed_once(tmp_path: Path) -> None:
    # Given an outbox publishing in batches of up to 100, with 250 messages pending at once
    broker = Broker()
    sent: list[AbuseObserved] = []
    outbox = batching_outbox(CheckpointStore(tmp_path), broker, sent, batch_max=100)
    burst = [observation(n) for n in range(1, 251)]
    outbox.stage(burst)
    confirmed = REGISTRY.get_sample_value("lazaretto_outbox_confirmed_total", {"outbox": "source-a"}) or 0.0

    # When it flushes
    assert await outbox.flush() == 250

    # Then three batch publishes carried them, in order, each confirmed once; nothing is pending,
    # in memory or in the saved document
    assert [len(carried) for carried in broker.publishes] == [100, 100, 50]
    assert broker.singles == 0
    assert [o for carried in broker.publishes for o in carried] == burst
    assert sent == burst
    assert (
        REGISTRY.get_sample_value("lazaretto_outbox_confirmed_total", {"outbox": "source-a"})
        == confirmed + 250
    )
    assert outbox.pending == []
    reloaded = make_outbox(CheckpointStore(tmp_path), broker.publish, Input())
    reloaded.load()
    assert reloaded.pending == []


async def test_a_message_alone_at_an_idle_outbox_goes_out_at_once_as_a_single_message(
    tmp_path: Path,
) -> None:
    # Given a batching outbox with nothing in flight
    broker = Broker()
    sent: list[AbuseObserved] = []
    outbox = batching_outbox(CheckpointStore(tmp_path), broker, sent)
    # When one message is queued and flushed, and one more while that one awaits its confirm
    broker.gate.clear()
    outbox.add([observation(1)])
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while not broker.publishes:
            await asyncio.sleep(0.001)
    outbox.add([observation(2)])
    async with asyncio.timeout(TIMEOUT):
        while len(broker.publishes) < 2:
            await asyncio.sleep(0.001)
    broker.gate.set()
    # Then each went out at once (no confirm awaited, no linger), in the single message form
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 2
    assert broker.publishes == [[observation(1)], [observation(2)]]
    assert broker.singles == 2
    assert sent == [observation(1), observation(2)]


async def test_a_refused_batch_leaves_every_member_pending_for_the_next_flush(tmp_path: Path) -> None:
    # Given 250 staged messages and a broker that refuses the first batch only
    broker = Broker()
    sent: list[AbuseObserved] = []
    outbox = batching_outbox(CheckpointStore(tmp_path), broker, sent, batch_max=100)
    burst = [observation(n) for n in range(1, 251)]
    outbox.stage(burst)
    broker.refuse = 1

    # When it flushes
    with pytest.raises(PublishError):
        await outbox.flush()

    # Then the refused batch's members are all pending (in memory and on disk), none marked sent;
    # the other batches' are sent
    refused = broker.publishes[0]
    assert len(refused) == 100
    assert outbox.pending == refused
    assert sent == [o for o in burst if o not in refused]
    reloaded = make_outbox(CheckpointStore(tmp_path), broker.publish, Input())
    reloaded.load()
    assert reloaded.pending == refused

    # And the next flush sends them: every message confirmed once, none lost
    assert await outbox.flush() == 100
    assert broker.publishes[-1] == refused
    assert sorted(o.count for o in sent) == list(range(1, 251))
    assert outbox.pending == []


async def test_a_newer_revision_of_a_member_of_a_batch_in_flight_stays_pending(tmp_path: Path) -> None:
    # Given three observations' first revisions published together, awaiting their confirm
    broker = Broker()
    sent: list[AbuseObserved] = []
    outbox = batching_outbox(
        CheckpointStore(tmp_path), broker, sent, supersedes=lambda new, old: new.revision > old.revision
    )
    a, b, c = (observation(n) for n in (1, 2, 3))
    outbox.add([a, b, c])
    broker.gate.clear()
    flushing = asyncio.create_task(outbox.flush())
    async with asyncio.timeout(TIMEOUT):
        while not broker.publishes:
            await asyncio.sleep(0.001)

    # When b's next revision is queued meanwhile, and then the batch confirmed
    b1 = b.model_copy(update={"revision": 1, "count": 5})
    outbox.add([b1])
    assert broker.publishes == [[a, b, c]]  # b1 does not go out before b's confirm
    broker.single_gate.clear()
    broker.gate.set()
    async with asyncio.timeout(TIMEOUT):
        while len(broker.publishes) < 2:
            await asyncio.sleep(0.001)

    # Then b1 stays pending (the confirm of b did not drop it) and is published after it
    assert sent == [a, b, c]
    assert outbox.pending == [b1]
    broker.single_gate.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 4
    assert broker.publishes == [[a, b, c], [b1]]
    assert sent == [a, b, c, b1]
    assert outbox.pending == []


async def test_urgent_messages_lead_the_batches_and_the_others_in_flight_stay_bounded(
    tmp_path: Path,
) -> None:
    # Given 300 later revisions pending, then two first revisions (urgent)
    broker = Broker()
    sent: list[AbuseObserved] = []
    outbox = batching_outbox(
        CheckpointStore(tmp_path), broker, sent, batch_max=100, urgent=lambda o: o.revision == 0
    )
    later = [observation(n).model_copy(update={"revision": 1}) for n in range(1, 301)]
    firsts = [observation(1_000), observation(1_001)]
    outbox.add(later)
    outbox.add(firsts)

    # When it flushes while the broker holds the confirms
    broker.gate.clear()
    flushing = asyncio.create_task(outbox.flush())
    await asyncio.sleep(0.05)

    # Then the first batch starts with the urgent ones, and no more later revisions await their
    # confirm than one at a time would have
    assert broker.publishes[0][:2] == firsts
    in_flight = [o for carried in broker.publishes for o in carried]
    assert sum(1 for o in in_flight if o.revision) == OTHERS_IN_FLIGHT

    # And an urgent one queued now goes out at once, alone, past the later revisions still pending
    third = observation(1_002)
    outbox.add([third])
    async with asyncio.timeout(TIMEOUT):
        while broker.publishes[-1] != [third]:
            await asyncio.sleep(0.001)
    broker.gate.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing == 303
    assert sorted(o.count for o in sent) == sorted(o.count for o in [*later, *firsts, third])


async def test_batched_paced_messages_still_go_out_at_the_pace(tmp_path: Path) -> None:
    # Given a batching outbox pacing its later revisions at 50 a second
    published: list[tuple[float, AbuseObserved]] = []

    async def publish(message: AbuseObserved, message_id: str) -> None:
        published.append((time.monotonic(), message))

    async def publish_batch(messages: list[AbuseObserved]) -> None:
        published.extend((time.monotonic(), message) for message in messages)

    outbox = ObservationOutbox(
        CheckpointStore(tmp_path),
        "source-a",
        AbuseObserved,
        publish=publish,
        publish_batch=publish_batch,
        ident=lambda o: str(o.observation_id),
        snapshot=Input().snapshot,
        urgent=lambda o: o.revision == 0,
        pace=Pace(per_s=50, within=100),
    )
    # When 40 are queued at once after a while idle (the pace's slack allows a short burst, no more)
    await asyncio.sleep(2 * PACE_SLACK)
    outbox.add(observation(n).model_copy(update={"revision": 1}) for n in range(1, 41))
    started = time.monotonic()
    async with asyncio.timeout(TIMEOUT):
        assert await outbox.flush() == 40
    # Then batching did not let them out faster than the pace (a burst of PACE_SLACK's worth at most)
    times = [at for at, _ in published]
    assert times[-1] - started >= (40 - 50 * PACE_SLACK - 1) / 50
    assert all(
        sum(1 for t in times if at <= t < at + 0.2) <= 0.2 * 50 + 50 * PACE_SLACK + 1 for at in times
    ), "more than the pace allows went out within 0.2 s"


async def test_waiting_for_held_messages_whose_write_was_released_meanwhile_returns(tmp_path: Path) -> None:
    # (found by the publish-order test: the staged messages were released between the creation of
    # the task that waits for their write and its first step; it raised StopIteration and killed the
    # detector's publisher task)
    outbox = batching_outbox(CheckpointStore(tmp_path), Broker(), [])
    waiting = asyncio.ensure_future(outbox._held_written())  # nothing held by the time it runs
    async with asyncio.timeout(TIMEOUT):
        await waiting
