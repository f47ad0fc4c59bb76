-- Guard rails (issue 11): the allowlist, the mass-quarantine circuit breaker, the tamper-evident audit.

-- The allowlist: addresses, prefixes and MACs (CPE or CM), each owned, explained and maybe expiring.
-- `source` settings: seeded from LAZARETTO_ALLOWLIST at every start (removed when the setting drops it).
CREATE TABLE allowlist_entries (
    entry_id         uuid        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('address', 'prefix', 'mac')),
    value            text        NOT NULL,
    effect           text        NOT NULL CHECK (effect IN ('exempt', 'notify_only')),
    subscriber_class text,
    owner            text        NOT NULL,
    reason           text        NOT NULL,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text        NOT NULL,
    source           text        NOT NULL DEFAULT 'operator' CHECK (source IN ('operator', 'settings')),
    UNIQUE (kind, value)
);
-- The snapshot version executors compare: bumped (row-locked) by every change.
CREATE TABLE allowlist_version (
    id      int    PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO allowlist_version (id, version) VALUES (1, 1);

-- Every case the breaker let through to enforcement (its window counts these), where it was.
CREATE TABLE breaker_enforcements (
    case_id uuid        PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    cmts    text,
    net     text        NOT NULL
);
CREATE INDEX breaker_enforcements_at ON breaker_enforcements (at);
-- Trips: `global`, `cmts:<name>` or `net:<a.b.c.0/24>`; open (paused) until an operator resumes.
CREATE TABLE breaker_trips (
    id         bigserial   PRIMARY KEY,
    scope      text        NOT NULL,
    tripped_at timestamptz NOT NULL DEFAULT now(),
    count      int         NOT NULL,
    "limit"    int         NOT NULL,
    window_s   double precision NOT NULL,
    resumed_at timestamptz,
    resumed_by text
);
CREATE UNIQUE INDEX breaker_one_open_trip_per_scope ON breaker_trips (scope) WHERE resumed_at IS NULL;
CREATE INDEX breaker_trips_resumed ON breaker_trips (scope, resumed_at);

-- The tamper-evident record: hash chains, one per case (or per address for an observation no case
-- took, per area for operator actions), so writers serialise only per chain. Each row's hash is
-- sha256(prev_hash || body) over the exact text stored in `body`, so verifying needs no knowledge of
-- how the body was serialised; a chain starts from 32 zero bytes.
CREATE TABLE audit_log (
    id        bigserial   PRIMARY KEY,
    chain     text        NOT NULL,
    seq       int         NOT NULL,
    at        timestamptz NOT NULL,
    kind      text        NOT NULL,
    actor     text        NOT NULL,
    body      text        NOT NULL,
    prev_hash bytea       NOT NULL,
    hash      bytea       NOT NULL,
    UNIQUE (chain, seq)
);

CREATE FUNCTION lazaretto_audit_append(p_chain text, p_kind text, p_actor text, p_detail jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq  int;
    v_prev bytea;
    v_at   timestamptz := clock_timestamp();
    v_body text;
    v_id   bigint;
BEGIN
    -- One writer per chain at a time (until commit); other chains go on in parallel.
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || p_chain, 0));
    SELECT seq, hash INTO v_seq, v_prev FROM audit_log WHERE chain = p_chain ORDER BY seq DESC LIMIT 1;
    IF v_seq IS NULL THEN
        v_seq := 0;
        v_prev := decode(repeat('00', 32), 'hex');
    END IF;
    v_body := jsonb_build_object(
        'chain', p_chain, 'seq', v_seq + 1, 'at', v_at, 'kind', p_kind, 'actor', p_actor,
        'detail', p_detail)::text;
    INSERT INTO audit_log (chain, seq, at, kind, actor, body, prev_hash, hash)
    VALUES (p_chain, v_seq + 1, v_at, p_kind, p_actor, v_body, v_prev,
            sha256(v_prev || convert_to(v_body, 'UTF8')))
    RETURNING id INTO v_id;
    RETURN v_id;
END $$;

-- Every case transition (operator actions and self-release attestations included: actor, detail).
CREATE FUNCTION lazaretto_audit_case_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lazaretto_audit_append('case:' || NEW.case_id, 'transition', NEW.actor, to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER case_events_audit AFTER INSERT ON case_events
    FOR EACH ROW EXECUTE FUNCTION lazaretto_audit_case_event();

-- Every decision on an observation (with whatever the rule engine records: rule, rule set version).
CREATE FUNCTION lazaretto_audit_observation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lazaretto_audit_append(
        CASE WHEN NEW.case_id IS NULL THEN 'address:' || host(NEW.ip) ELSE 'case:' || NEW.case_id END,
        CASE WHEN TG_OP = 'INSERT' THEN 'decision' ELSE 'decision_revised' END,
        'policy',
        to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER observations_audit AFTER INSERT OR UPDATE ON observations
    FOR EACH ROW EXECUTE FUNCTION lazaretto_audit_observation();
