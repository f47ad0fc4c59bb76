"""Abuse reports from a maildir (LAZARETTO_REPORTS_MAILDIR): each message an MDA delivered into `new/`
goes through the same intake as `POST /v1/reports` (`report_intake`), audited with actor `maildir`.

Order, so that a crash neither loses nor repeats a report: the observation, its audit row and the
message's key (`report_intake`) commit in one transaction; only then is the message moved to `cur/`.
A crash before the commit leaves the message in `new/` (taken again); a crash after it leaves a
message whose key is stored (moved without a second observation). A refused message goes to
`failed/` beside a `<name>.reason` file (written first) saying why.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from lazaretto_core.db import Connection

from . import report_intake
from .rules import Network
from .uow import Transactions

log = logging.getLogger(__name__)

ACTOR = "maildir"
# The endpoint's limit: a report is a complaint with a sample, not a mailbox.
MAX_MESSAGE = 1024 * 1024


class MaildirWatcher:
    def __init__(self, root: Path, uow: Transactions, own_prefixes: tuple[Network, ...]) -> None:
        self.root = root
        self.uow = uow
        self.own_prefixes = own_prefixes
        for folder in ("tmp", "new", "cur", "failed"):
            (root / folder).mkdir(parents=True, exist_ok=True)

    async def scan(self) -> int:
        """Take every message in `new/` (oldest name first); the number taken in."""
        taken = 0
        for path in sorted((self.root / "new").iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            taken += await self._take(path)
        return taken

    async def _take(self, path: Path) -> int:
        key = path.name.split(":", 1)[0]
        try:
            with path.open("rb") as message:
                raw = message.read(MAX_MESSAGE + 1)
        except FileNotFoundError:  # another instance took it
            return 0
        try:
            if len(raw) > MAX_MESSAGE:
                raise report_intake.ReportRefused(f"larger than {MAX_MESSAGE} bytes")
            report, observation = report_intake.observation_for(raw, self.own_prefixes, ACTOR)
        except report_intake.ReportRefused as exc:
            self._fail(path, str(exc))
            return 0
        async with self.uow() as conn:
            if await _claim(conn, key, observation.observation_id):
                await report_intake.record(conn, report, observation, ACTOR, {"message": key})
                log.info("abuse report %s: %s %s as of %s", key, report.category, report.ip, report.at)
            else:
                log.info("abuse report %s was taken in before a restart; moving it to cur/", key)
        self._move(path, self.root / "cur" / _seen(path.name))
        return 1

    def _fail(self, path: Path, reason: str) -> None:
        log.warning("abuse report %s refused: %s", path.name, reason)
        failed = self.root / "failed"
        (failed / f"{path.name}.reason").write_text(reason + "\n", encoding="utf-8")
        self._move(path, failed / path.name)

    @staticmethod
    def _move(path: Path, target: Path) -> None:
        try:
            os.rename(path, target)
        except FileNotFoundError:
            log.info("abuse report %s was moved by someone else", path.name)


async def _claim(conn: Connection, key: str, observation_id: uuid.UUID) -> bool:
    row = await conn.fetchval(
        "INSERT INTO report_intake (message_key, observation_id) VALUES ($1, $2)"
        " ON CONFLICT (message_key) DO NOTHING RETURNING message_key",
        key,
        observation_id,
    )
    return row is not None


def _seen(name: str) -> str:
    """A message in cur/ carries its info suffix (maildir: `:2,` plus flags; S = seen)."""
    return name if ":2," in name else f"{name}:2,S"
