-- policyfix (issues 15, 11): an enforcing observation whose attribution peers (the provisioner's lease
-- history, cmts-agent's CPE tables) are unreachable is kept here, with the decision the rules took,
-- and decided once they answer again (PolicyHandlers.retry_pending_attributions): never dead-lettered.
CREATE TABLE attribution_pending (
    observation_id  uuid        PRIMARY KEY,
    revision        int         NOT NULL,
    -- The AbuseObserved (its highest revision) as consumed.
    event           jsonb       NOT NULL,
    rule            text        NOT NULL,
    ruleset_version text        NOT NULL,
    reason          text        NOT NULL,
    audit           jsonb       NOT NULL,
    waiting_since   timestamptz NOT NULL DEFAULT now(),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT ''
);
CREATE INDEX attribution_pending_due ON attribution_pending (next_attempt_at);
