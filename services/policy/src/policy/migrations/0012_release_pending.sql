-- A subscriber's release request (release.requested.v1) whose device look-up failed (provisioner or
-- cmts-agent unreachable): kept until the peers answer, then decided as on arrival. Never
-- dead-lettered: a subscriber's release must not be lost to an outage (release_pending.py).
CREATE TABLE release_pending (
    request_id      uuid        PRIMARY KEY,
    -- The bus message it came in (its inbox claim, taken when it is decided, either way).
    message_id      text        NOT NULL,
    request         jsonb       NOT NULL,
    waiting_since   timestamptz NOT NULL DEFAULT now(),
    attempts        int         NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX release_pending_due ON release_pending (next_attempt_at);
