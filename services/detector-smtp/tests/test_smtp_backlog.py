"""MTA log lines are counted at their own time: a restart resuming the log from its saved position (hours
of mail read in a second) counts them with their real spacing, lines older than the windows' reach
never count in the current window, and lines read as they are written count as they always did."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from detector_smtp.linetime import LineTime
from detector_smtp.logtail import LogFollower, LogSource
from detector_smtp.maillog import parser_for
from detector_smtp.observations import AddressClasses, SpamDetector
from detector_smtp.rules import RuleSet, default_rules
from detector_smtp.windows import ClientWindows
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.ranges import SubscriberRanges
from lazaretto_core.tail import Checkpoint

SUBSCRIBER = "100.64.2.21"
NOW = datetime(2026, 12, 3, 10, 5, tzinfo=UTC)


class Reports:
    def __init__(self) -> None:
        self.observations: list[AbuseObserved] = []

    def report(self, event: AbuseObserved) -> None:
        self.observations.append(event)


def syslog_stamp(at: datetime) -> str:
    """`Mmm dd hh:mm:ss` as syslog writes it (day space-padded)."""
    return f"{at:%b} {at.day:2d} {at:%H:%M:%S}"


def postfix_messages(times: Iterable[datetime], ip: str = SUBSCRIBER) -> str:
    """A client's messages as Postfix logs them: connect, client= and qmgr's from= lines, each at its time."""
    lines = []
    for n, at in enumerate(times):
        t, qid = syslog_stamp(at), f"{0xA000 + n:X}F2187"
        lines += [
            f"{t} mx postfix/smtpd[1]: connect from cpe[{ip}]\n",
            f"{t} mx postfix/smtpd[1]: {qid}: client=cpe[{ip}]\n",
            f"{t} mx postfix/qmgr[2]: {qid}: from=<a{n}@example.net>, size=423, nrcpt=1 (queue active)\n",
        ]
    return "".join(lines)


def detector() -> SpamDetector:
    return SpamDetector(
        ClientWindows(),
        RuleSet(default_rules()),  # dynamic-burst: 100 messages a minute; 1000 an hour
        AddressClasses(SubscriberRanges(["100.64.0.0/10"]), SubscriberRanges([]), SubscriberRanges([])),
    )


async def follow(follower: LogFollower, lines: int) -> None:
    """Run `follower` until it has read `lines` lines."""
    task = asyncio.create_task(follower.run())
    try:
        deadline = time.monotonic() + 30
        while follower.lines < lines:
            assert time.monotonic() < deadline, f"read {follower.lines} of {lines} lines"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def minute_and_hour(spam: SpamDetector, at: datetime) -> tuple[int, int]:
    state = spam.windows.get(SUBSCRIBER)
    assert state is not None
    short, long = spam.windows.counts(state, at.timestamp())
    return short.messages, long.messages


async def test_two_hours_of_mail_read_after_a_restart_keep_their_spacing(tmp_path: Path) -> None:
    # Given a snapshot saved at 08:04, and the subscriber's mail logged while the detector was down:
    # 150 messages from 08:05 to 10:05, one every 48 s (75 an hour, under every rule)
    saved_at = NOW - timedelta(hours=2, minutes=1)
    log = tmp_path / "mail.log"
    log.write_text(postfix_messages(NOW - timedelta(hours=2) + timedelta(seconds=48 * n) for n in range(150)))
    spam, reports = detector(), Reports()
    # When the restarted detector resumes the log from the snapshot's position, at 10:05
    follower = LogFollower(
        LogSource(log, "postfix"),
        parser_for("postfix"),
        spam,
        reports,
        start=Checkpoint(log.stat().st_ino, 0, b""),
        clock=NOW.timestamp,
        tz=UTC,
        saved_at=saved_at.timestamp(),
    )
    await follow(follower, 3 * 150)
    # Then nobody is reported: the windows hold the mail as it was sent, 1-2 messages a minute
    assert reports.observations == []
    minute, hour = minute_and_hour(spam, NOW)
    assert minute <= 2
    assert 74 <= hour <= 75  # the last hour's messages (the window's 10 s slices cut one or not)


async def test_lines_older_than_the_windows_reach_never_count_in_the_current_window(tmp_path: Path) -> None:
    # Given a snapshot saved a minute ago, and a log whose unread part starts with 120 messages
    # stamped three hours before it, then 60 messages of the last 30 seconds
    saved_at = NOW - timedelta(minutes=1)
    old = postfix_messages(saved_at - timedelta(hours=3, seconds=-n / 10) for n in range(120))
    log = tmp_path / "mail.log"
    log.write_text(old + postfix_messages(NOW - timedelta(seconds=(59 - n) / 2) for n in range(60)))
    spam, reports = detector(), Reports()
    # When the detector resumes the log there
    follower = LogFollower(
        LogSource(log, "postfix"),
        parser_for("postfix"),
        spam,
        reports,
        start=Checkpoint(log.stat().st_ino, 0, b""),
        clock=NOW.timestamp,
        tz=UTC,
        saved_at=saved_at.timestamp(),
    )
    await follow(follower, 3 * 180)
    # Then the old lines are not counted (not now, nor at any time the windows hold): 60 messages
    # in the minute, under the burst rule's 100
    assert reports.observations == []
    assert minute_and_hour(spam, NOW) == (60, 60)
    assert follower.line_time.before_earliest == 2 * 120  # each message's connect and from= lines


async def test_mail_read_as_it_is_logged_is_counted_as_before(tmp_path: Path) -> None:
    # Given a detector following a log from its end, in the local zone (the default)
    log = tmp_path / "mail.log"
    log.write_text("")
    spam, reports = detector(), Reports()
    follower = LogFollower(LogSource(log, "postfix"), parser_for("postfix"), spam, reports)
    task = asyncio.create_task(follower.run())
    try:
        # When a subscriber sends 120 messages within a few seconds, logged as they are sent
        now = datetime.now()
        with log.open("a") as out:
            out.write(postfix_messages([now] * 120))
        deadline = time.monotonic() + 30
        while follower.lines < 3 * 120:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Then the burst rule reports it once, at its 100th message, with the minute's counts
    (report,) = reports.observations
    assert report.ip == SUBSCRIBER
    assert report.evidence["minute"]["messages"] == 100
    assert report.signatures[0].startswith("smtp dynamic-burst")
    assert abs(report.last_seen.timestamp() - now.timestamp()) < 1


def test_a_line_time_is_its_own_stamp_within_the_clock() -> None:
    now = NOW.timestamp()
    times = LineTime(UTC, earliest=now - 3600 * 5)
    # syslog: no year (the latest not more than a day ahead), no zone (the configured one)
    assert (
        times.at(b"Dec  3 08:00:00 mx postfix/smtpd[1]: x", now)
        == datetime(2026, 12, 3, 8, tzinfo=UTC).timestamp()
    )
    # RFC 3339 with its offset; Exim's own stamp, with and without one
    iso = b"2026-12-03T09:00:00.250000+01:00 mx postfix/smtpd[1]: x"
    assert times.at(iso, now) == datetime(2026, 12, 3, 8, tzinfo=UTC).timestamp() + 0.25
    exim = b"2026-12-03 07:30:00 +0100 1Pwzn4-0002xx-A1 <= a@b.example"
    assert times.at(exim, now) == datetime(2026, 12, 3, 6, 30, tzinfo=UTC).timestamp()
    assert (
        times.at(b"2026-12-03 07:30:00 1Pwzn4-0002xx-A1 <= a@b", now)
        == datetime(2026, 12, 3, 7, 30, tzinfo=UTC).timestamp()
    )
    minus = LineTime(timezone(timedelta(hours=-5)), earliest=0)
    assert minus.at(b"Dec  3 05:00:00 mx x", now) == datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()
    # ahead of the clock (a clock or zone off): now; no stamp: arriving now; too old: not counted
    assert times.at(b"Dec  3 11:00:00 mx x", now) == now
    assert times.at(b"postfix/smtpd[1]: no stamp", now) == now
    assert times.at(b"Dec  3 04:00:00 mx x", now) is None
    assert (times.ahead, times.before_earliest) == (1, 1)
    # a stamp more than a day ahead is last year's (the detector read it after new year's eve)
    new_year = datetime(2027, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    late = LineTime(UTC, earliest=0).at(b"Dec 31 23:59:50 mx x", new_year)
    assert late == datetime(2026, 12, 31, 23, 59, 50, tzinfo=UTC).timestamp()
