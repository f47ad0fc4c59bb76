-- Evidence-based rules (issue 11): observations keep their running evidence (the highest revision of
-- each), every decision names the rule and the rule set's version, and each case opened by a rule has
-- its ladder terms (offence, delayed enforcement, expiry, self-release terms) beside it.
ALTER TABLE observations
    ADD COLUMN revision              int     NOT NULL DEFAULT 0,
    ADD COLUMN distinct_destinations int,
    ADD COLUMN distinct_dst_ports    int,
    ADD COLUMN direction             text    NOT NULL DEFAULT 'unknown',
    ADD COLUMN established           boolean,
    ADD COLUMN app_protos            jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN interface             text,
    ADD COLUMN rule                  text,
    ADD COLUMN ruleset_version       text,
    ADD COLUMN decided_at            timestamptz NOT NULL DEFAULT now();
CREATE INDEX observations_dry_run ON observations (decided_at DESC) WHERE decision = 'dry_run';

CREATE TABLE case_terms (
    case_id                 uuid        PRIMARY KEY REFERENCES cases (case_id),
    rule                    text        NOT NULL,
    ruleset_version         text        NOT NULL,
    offence                 int         NOT NULL CHECK (offence >= 1),
    self_release            text        NOT NULL CHECK (self_release IN ('now', 'later', 'never')),
    self_release_not_before timestamptz,
    max_self_releases       int         NOT NULL,
    portal_template         text        NOT NULL,
    -- Delayed enforcement and expiry, driven by policy's loops (they survive a restart here).
    enforce_at              timestamptz,
    expires_at              timestamptz
);
CREATE INDEX case_terms_enforce_due ON case_terms (enforce_at) WHERE enforce_at IS NOT NULL;
CREATE INDEX case_terms_expiry_due ON case_terms (expires_at) WHERE expires_at IS NOT NULL;
-- Grace, probation and escalation look up a device's past cases.
CREATE INDEX cases_device_history ON cases (key_kind, device_key, opened_at);
