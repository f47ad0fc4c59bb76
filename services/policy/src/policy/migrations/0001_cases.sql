-- Cases, the observations that opened or fed them, and the audit trail of every transition.
CREATE TABLE cases (
    case_id          uuid        PRIMARY KEY,
    ip               inet        NOT NULL,
    cpe_mac          text,
    cm_mac           text,
    scope            text        NOT NULL CHECK (scope IN ('cpe', 'modem')),
    category         text        NOT NULL,
    reason           text        NOT NULL,
    state            text        NOT NULL,
    opened_by        text        NOT NULL,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    -- The step in flight: only a result carrying this step id moves the case.
    step             text,
    step_id          uuid,
    step_attempts    int         NOT NULL DEFAULT 0,
    next_retry_at    timestamptz,
    self_releases    int         NOT NULL DEFAULT 0
);
-- One open case per address: a second observation feeds the open case instead of opening another.
CREATE UNIQUE INDEX cases_one_open_per_ip ON cases (ip) WHERE closed_at IS NULL;
CREATE INDEX cases_retry_due ON cases (next_retry_at) WHERE next_retry_at IS NOT NULL;

CREATE TABLE observations (
    observation_id uuid        PRIMARY KEY,
    detector       text        NOT NULL,
    sensor         text        NOT NULL,
    ip             inet        NOT NULL,
    category       text        NOT NULL,
    severity       int         NOT NULL,
    count          int         NOT NULL,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    signatures     jsonb       NOT NULL,
    evidence       jsonb       NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    case_id        uuid        REFERENCES cases (case_id),
    decision       text        NOT NULL
);
CREATE INDEX observations_ip ON observations (ip, last_seen DESC);

CREATE TABLE case_events (
    id         bigserial   PRIMARY KEY,
    case_id    uuid        NOT NULL REFERENCES cases (case_id),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    from_state text,
    to_state   text        NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX case_events_case ON case_events (case_id, id);
