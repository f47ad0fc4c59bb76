"""Where a subscriber's self-release stands, as the portal's progress page shows it.

A release request policy refuses is dead-lettered (it would be refused again); it is also recorded on the
case as an event with a short code, so the subscriber's page can say it was refused and why instead of
waiting for a release that will never come.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import Any

from lazaretto_core.contracts import RELEASING_STATES
from lazaretto_core.db import Connection

from . import commands, release_pending, store
from .casestore import CaseStore
from .flow import Step

log = logging.getLogger(__name__)

# Refusal codes the portal has words for; anything else is "other".
REFUSAL_CODES: dict[type[commands.Refused], str] = {
    commands.SelfReleasesUsed: "allowance_used",
    commands.NotTheDevice: "not_this_device",
    commands.NotReleasable: "not_releasable",
    commands.SelfReleaseLater: "not_yet",
    commands.SelfReleaseNever: "helpdesk_only",
}


# The release's own steps. While one is in flight the release was accepted and is under way, retried
# after a failure too (`failed_retrying` keeps the step it retries in `step`).
RELEASE_STEPS: frozenset[Step] = frozenset({Step.GARDEN_REMOVE, Step.RESET_OUT})


def release_under_way(case: store.Case) -> bool:
    return case.state in RELEASING_STATES or case.step in RELEASE_STEPS


def refusal_code(exc: commands.Refused) -> str:
    return next((code for kind, code in REFUSAL_CODES.items() if isinstance(exc, kind)), "other")


async def record_refusal(
    storage: CaseStore,
    conn: Connection,
    case_id: uuid.UUID,
    client_ip: str,
    request_id: uuid.UUID,
    exc: commands.Refused,
) -> None:
    case = await storage.get_case(conn, case_id)
    if case is None:
        return
    # Policy's decision, not the subscriber's act: the subscriber is named in the detail.
    detail = {
        "release_refused": refusal_code(exc),
        "reason": str(exc),
        "request_id": str(request_id),
        "client_ip": client_ip,
    }
    await storage.add_event(conn, case_id, "policy", case.state, case.state, detail)


async def release_restarts_modem(conn: Connection, case: store.Case) -> bool:
    """Whether releasing the case resets the modem: only a case with a modem whose garden was not a
    mail block alone (a spam-only case the provisioner blocked on the packet filter: the device kept
    its address, so nothing needs it to renew; `commands.step_result`)."""
    if case.cm_mac is None:
        return False
    applied = await conn.fetchval(
        "SELECT detail->>'mode' FROM case_events WHERE case_id = $1 AND from_state = 'garden_requested'"
        " AND to_state IN ('quarantined', 'modem_reset_requested') ORDER BY id DESC LIMIT 1",
        case.case_id,
    )
    return bool(applied != "smtp_block")


async def progress(conn: Connection, case: store.Case, since: datetime | None) -> dict[str, Any]:
    """The case's step for the visitor, and the newest refusal of a self-release since `since`."""
    refused = await conn.fetchrow(
        "SELECT at, detail FROM case_events WHERE case_id = $1 AND detail ? 'release_refused'"
        " AND ($2::timestamptz IS NULL OR at >= $2) ORDER BY id DESC LIMIT 1",
        case.case_id,
        since,
    )
    refusal = None
    if refused is not None:
        detail = json.loads(refused["detail"])
        refusal = {"code": detail["release_refused"], "at": refused["at"].isoformat()}
    return {
        "case_id": str(case.case_id),
        "reference": case.reference,
        "state": case.state,
        "closed": case.closed_at is not None,
        "accepted": release_under_way(case),
        # Which of the release's steps is under way when the state does not say (`failed_retrying`).
        "step": case.step.value if case.step is not None else None,
        "refusal": refusal,
        "modem_restarts": await release_restarts_modem(conn, case),
        # Kept through an outage of the device look-up: decided by itself once the peers answer.
        "queued": not refusal and await release_pending.queued_for(conn, case.case_id),
    }
