-- Every reset SET the agent is about to send, recorded BEFORE it is sent (the intent), then what came
-- of it. A crash between the SET and its outcome leaves a row without an outcome: the next run looks
-- at the modem (its registration marker against `baseline`) before it sends anything. The rows of the
-- last hour whose SET may have reached the modem (`counted`) cap the resets per modem and hour.
CREATE TABLE cmts_reset_intents (
    id           bigserial   PRIMARY KEY,
    cm_mac       text        NOT NULL,
    cmts         text        NOT NULL,
    method       text        NOT NULL,          -- the method label (names the MIB object)
    step_id      uuid,                          -- the reset command, if one asked for it
    baseline     text,                          -- registration marker read just before the SET
    intent_at    timestamptz NOT NULL DEFAULT now(),
    answered_at  timestamptz,                   -- outcome known (for `sent` steps of a previous version: SET accepted)
    outcome      text,                          -- NULL: no outcome recorded (the run died)
    counted      boolean     NOT NULL DEFAULT true,  -- false: provably had no effect on the modem
    report       jsonb,                         -- the finished reset (shared across replicas)
    finished_at  timestamptz
);
CREATE INDEX cmts_reset_intents_by_mac ON cmts_reset_intents (cm_mac, intent_at);

-- Steps a previous version marked `sent` (SET accepted, result not yet published) become intents whose
-- SET was answered, so an upgrade mid-reset does not send it again.
INSERT INTO cmts_reset_intents (cm_mac, cmts, method, step_id, intent_at, answered_at)
SELECT cm_mac, COALESCE(cmts, ''), COALESCE(method, ''), step_id, COALESCE(sent_at, now()), sent_at
FROM cmts_reset_steps WHERE state = 'sent';
