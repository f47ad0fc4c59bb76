"""What the detector publishes first when a flood's windows close and open again together: the revision
of a running window (an alert that completed some address's evidence) does not queue behind them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import detector_snort.engine as engine_module
from detector_snort.aggregate import Aggregator
from detector_snort.alerts import Alert
from detector_snort.engine import BEHIND_PER_S, Publish, SourceEngine
from detector_snort.parsers import parse_syslog
from detector_snort.pipeline import AlertPipeline, Source
from lazaretto_core.checkpoints import CheckpointStore
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.observation_outbox import PACE_SLACK
from lazaretto_core.ranges import SubscriberRanges

FLOOD = 300
SUBSCRIBER = "100.64.9.9"


def alert(src: str, dst: str) -> tuple[Alert, None]:
    text = (
        "<38>Sep  5 16:05:26 dev snort: [1:1000017:0] UDP Connection [Classification: Misc activity] "
        f"[Priority: 3] {{UDP}} {src}:55776 -> {dst}:32414"
    )
    parsed = parse_syslog(text.encode(), sensor="ids-syslog")
    assert parsed is not None
    return parsed, None


def flood_engine(
    tmp_path: Path, now: list[float], publish: Publish, behind_per_s: float = BEHIND_PER_S
) -> SourceEngine:
    """A syslog source's engine on a clock the test moves: two revisions per window, then none."""
    return SourceEngine(
        Source("syslog", "syslog", "ids-syslog"),
        AlertPipeline(SubscriberRanges(["100.64.0.0/10"]), clock=lambda: now[0]),
        Aggregator(60.0, burst=2, rate=0.001),
        CheckpointStore(tmp_path / "state"),
        publish,
        save_every=3600,
        behind_per_s=behind_per_s,
    )


async def confirmed(engine: SourceEngine) -> None:
    async with asyncio.timeout(30):
        while len(engine.outbox):
            await asyncio.sleep(0.01)


async def open_flood_windows(engine: SourceEngine) -> list[str]:
    """A flood of addresses whose windows opened together, each with a third alert its window's rate
    held back (owed at close); their addresses."""
    flood = [f"100.65.{n // 250}.{n % 250 + 1}" for n in range(FLOOD)]
    for destination in ("10.25.10.1", "10.25.10.2", "10.25.10.3"):
        await engine.feed_alerts([alert(ip, destination) for ip in flood])
        await confirmed(engine)
    return flood


class SlowBroker:
    """Confirms only while `open` is set; remembers the order publishes began in."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.began: list[AbuseObserved] = []

    async def publish(self, observation: AbuseObserved, message_id: str) -> None:
        self.began.append(observation)
        await self.open.wait()


async def test_a_running_windows_revision_goes_out_before_the_last_revisions_of_closed_windows(
    tmp_path: Path,
) -> None:
    now = [1_000.0]
    broker = SlowBroker()
    engine = flood_engine(tmp_path, now, broker.publish)
    await engine.recover()
    # Given a flood of addresses whose windows opened together, each with a third alert its window's
    # rate held back (owed at close)
    flood = await open_flood_windows(engine)
    assert len(broker.began) == 2 * FLOOD
    # and a subscriber whose window opened 30 s later, its first revision confirmed
    now[0] += 30
    await engine.feed_alerts([alert(SUBSCRIBER, "10.25.10.1")])
    await confirmed(engine)
    # When the flood's windows close, with a broker slow to confirm, and right then an alert of the
    # subscriber to a new destination grows its evidence
    broker.open.clear()
    now[0] += 31
    before = len(broker.began)
    assert await engine.flush() == FLOOD
    # and the flood's next alerts open each address's window again (a first revision each)
    continued = await engine.feed_alerts([alert(ip, "10.25.10.4") for ip in flood])
    assert {o.revision for o in continued} == {0}
    await asyncio.sleep(0.05)  # the publisher took what it may
    [grown] = await engine.feed_alerts([alert(SUBSCRIBER, "10.25.10.2")])
    for _ in range(500):  # up to 5 s
        if grown in broker.began:
            break
        await asyncio.sleep(0.01)
    # Then the subscriber's revision was published while the flood's closing and continuing
    # revisions still waited for their confirms, most of them not even begun
    begun = broker.began[before:]
    assert grown in begun, f"queued behind {2 * FLOOD - len(begun)} flood revisions not yet begun"
    assert (grown.revision, grown.distinct_destinations) == (1, 2)
    assert len(begun) < FLOOD // 2
    broker.open.set()
    await confirmed(engine)
    # and every closing revision went out too, with the count its window reached, and every
    # continuing window's first
    later = [o for o in broker.began[before:] if str(o.ip) != SUBSCRIBER]
    assert sorted((str(o.ip), o.revision, o.count) for o in later) == sorted(
        [(ip, 2, 3) for ip in flood] + [(ip, 0, 1) for ip in flood]
    )
    await engine.close()


async def test_closing_and_continuing_revisions_reach_the_broker_spread_over_time(tmp_path: Path) -> None:
    now = [1_000.0]
    began: list[tuple[float, AbuseObserved]] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        began.append((time.monotonic(), observation))

    engine = flood_engine(tmp_path, now, publish, behind_per_s=400)
    await engine.recover()
    # Given a flood of addresses whose windows opened together, each owing a revision at its close
    flood = await open_flood_windows(engine)
    before = len(began)
    # When the windows close, the flood's next alerts open them again, and one continuing window
    # gets news (a new destination) a moment later
    now[0] += 61
    started = time.monotonic()
    assert await engine.flush() == FLOOD
    await engine.feed_alerts([alert(ip, "10.25.10.4") for ip in flood])
    await asyncio.sleep(0.1)
    [news] = await engine.feed_alerts([alert(flood[7], "10.25.10.5")])
    await confirmed(engine)
    # Then the 600 closing and continuing revisions reached the broker at the engine's pace (400 a
    # second, more while more than 4,000 wait), not at once, and the continuing window's news went
    # past them like any running window's revision
    spread = [(at, o) for at, o in began[before:] if o is not news]
    assert sorted(str(o.ip) for _, o in spread if o.revision == 2) == sorted(flood)  # each close
    continued = {str(o.ip) for _, o in spread if o.revision == 0}
    assert continued >= set(flood) - {flood[7]}  # its first revision may have been replaced unsent
    assert spread[-1][0] - started >= (len(spread) - 400 * PACE_SLACK - 1) / 400
    order = [o for _, o in began[before:]]
    assert (news.revision, news.distinct_destinations) == (1, 2)
    assert order.index(news) < FLOOD


async def test_the_publisher_carries_on_after_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an outbox whose first flush raises what no broker error is (a bug, as the StopIteration
    # a held write's wait once raised), not the PublishError a failed publish becomes
    monkeypatch.setattr(engine_module, "RETRY_AFTER", 0.05)
    published: list[AbuseObserved] = []

    async def publish(observation: AbuseObserved, message_id: str) -> None:
        published.append(observation)

    now = [time.monotonic()]
    engine = flood_engine(tmp_path, now, publish)
    await engine.recover()
    flush = engine.outbox.flush
    flushes = 0

    async def flush_with_a_bug() -> None:
        nonlocal flushes
        flushes += 1
        if flushes == 1:
            raise RuntimeError("a bug in the outbox")
        await flush()

    monkeypatch.setattr(engine.outbox, "flush", flush_with_a_bug)
    # When one alert is fed and nothing else arrives
    await engine.feed_alerts([alert(SUBSCRIBER, "10.25.10.1")])
    # Then its observation is still published, without waiting for another alert
    await confirmed(engine)
    assert [o.ip for o in published] == [SUBSCRIBER]
    # and the error was logged with its traceback
    assert "publishing raised unexpectedly" in caplog.text
    assert "RuntimeError: a bug in the outbox" in caplog.text
