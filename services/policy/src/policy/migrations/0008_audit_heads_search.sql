-- policy-perf (issue 11): each audit chain's head, and indexes for the admin search.
--
-- audit_heads: the newest link of each chain (its seq and hash), written by the same append that
-- writes the link. The verifier compares every chain's last row with its head, so deleting a chain's
-- newest rows (or all of them) is detected, which the links alone cannot show. Locking the head row
-- also serialises the writers of one chain: row locks, where the advisory lock of 0004 took an entry
-- of PostgreSQL's shared lock table per chain and transaction (a transaction writing many chains, a
-- batch of decisions or a bulk load, ran out of them).
CREATE TABLE audit_heads (
    chain text  PRIMARY KEY,
    seq   int   NOT NULL,
    hash  bytea NOT NULL
);
INSERT INTO audit_heads (chain, seq, hash)
    SELECT DISTINCT ON (chain) chain, seq, hash FROM audit_log ORDER BY chain, seq DESC;

CREATE OR REPLACE FUNCTION lazaretto_audit_append(p_chain text, p_kind text, p_actor text, p_detail jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq  int;
    v_prev bytea;
    v_hash bytea;
    v_at   timestamptz := clock_timestamp();
    v_body text;
    v_id   bigint;
BEGIN
    -- The chain's head, made at its first link and locked until commit: one writer per chain at a
    -- time, other chains go on in parallel.
    INSERT INTO audit_heads AS h (chain, seq, hash) VALUES (p_chain, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (chain) DO UPDATE SET seq = h.seq
        RETURNING h.seq, h.hash INTO v_seq, v_prev;
    v_body := jsonb_build_object(
        'chain', p_chain, 'seq', v_seq + 1, 'at', v_at, 'kind', p_kind, 'actor', p_actor,
        'detail', p_detail)::text;
    v_hash := sha256(v_prev || convert_to(v_body, 'UTF8'));
    INSERT INTO audit_log (chain, seq, at, kind, actor, body, prev_hash, hash)
    VALUES (p_chain, v_seq + 1, v_at, p_kind, p_actor, v_body, v_prev, v_hash)
    RETURNING id INTO v_id;
    UPDATE audit_heads SET seq = v_seq + 1, hash = v_hash WHERE chain = p_chain;
    RETURN v_id;
END $$;

-- The admin search pages newest first by (opened_at, case_id) (keyset: the next page starts where the
-- last ended). Listing by state read the whole opened_at index backwards filtering on state (115 ms
-- for 100 of 3,000 `needs_operator` among 120,000 cases); by (state, opened_at, case_id) it reads
-- only the page. The plain list reads (opened_at, case_id), which replaces the opened_at index.
CREATE INDEX cases_state_opened ON cases (state, opened_at, case_id);
CREATE INDEX cases_opened ON cases (opened_at, case_id);
DROP INDEX cases_opened_at;
