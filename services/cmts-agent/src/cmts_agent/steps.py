"""Reset commands already handled, by step id: a redelivered command republishes its result instead
of resetting the modem again (one interrupted mid-reset is recovered through the reset journal), as
long as the retention keeps the step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from lazaretto_core import db
from lazaretto_core.contracts import ModemResetCompleted, ModemResetFailed

from .journal import JOURNAL_PURGED

StepResult = ModemResetCompleted | ModemResetFailed

# Steps last written more than the retention ago, oldest first through `reset_steps_updated`
# (migration 0006), as `journal.PURGE_RESET_INTENTS`. A step a previous version left `sent` goes too:
# migration 0002 copied it into the journal as an intent without an outcome, which is kept.
PURGE_RESET_STEPS = """
DELETE FROM reset_steps WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM reset_steps WHERE updated_at < now() - $1::interval
    ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED))
"""


@dataclass(frozen=True)
class StepRow:
    step_id: UUID
    state: str  # sent | done
    method: str | None
    sent_at: datetime | None
    result: StepResult | None


class ResetSteps:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, step_id: UUID) -> StepRow | None:
        row = await self.pool.fetchrow("SELECT * FROM reset_steps WHERE step_id = $1", step_id)
        if row is None:
            return None
        result: StepResult | None = None
        if row["result"] is not None:
            body = json.loads(row["result"])
            model = ModemResetCompleted if row["result_type"] == "completed" else ModemResetFailed
            result = model.model_validate(body)
        return StepRow(row["step_id"], row["state"], row["method"], row["sent_at"], result)

    async def finish(self, result: StepResult) -> None:
        kind = "completed" if isinstance(result, ModemResetCompleted) else "failed"
        await self.pool.execute(
            """
            INSERT INTO reset_steps (step_id, case_id, cm_mac, cmts, state, result_type, result)
            VALUES ($1, $2, $3, $4, 'done', $5, $6::jsonb)
            ON CONFLICT (step_id) DO UPDATE SET state = 'done', result_type = EXCLUDED.result_type,
                result = EXCLUDED.result, cmts = COALESCE(EXCLUDED.cmts, reset_steps.cmts),
                updated_at = now()
            """,
            result.step_id,
            result.case_id,
            result.cm_mac,
            result.cmts,
            kind,
            result.model_dump_json(),
        )

    async def purge(self, retention: timedelta) -> int:
        """Forget the steps handled more than `retention` ago, in batches (`db.purge_in_batches`): a
        command delivered again after that is no longer recognised by its step id here."""
        return await db.purge_in_batches(
            self.pool, PURGE_RESET_STEPS, retention, JOURNAL_PURGED.labels("reset_steps")
        )
