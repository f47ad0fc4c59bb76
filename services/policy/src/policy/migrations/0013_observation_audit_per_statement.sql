-- policy-perf (issue 11): observations' decisions audited once per statement, not once per row.
--
-- 0004's row trigger appended one link per stored observation (a head upsert, an audit_log insert
-- and a head update each): about a fifth of bench-policy's time. A batch of decisions is stored by one
-- statement, so the audit now appends per statement:
-- - a decision about an observation a case took (case_id set) is still one link in that case's chain,
--   row by row, in the statement's order: the case's audit reads as before;
-- - the decisions no case took, all of them, are ONE link (kind `decisions` or `decisions_revised`,
--   detail `{"observations": [row, ...]}`) in the chain of the database session that wrote them,
--   `decisions:<backend pid>`. One session runs one transaction at a time, so no two writers ever
--   wait for the same head, and a link deleted from the middle of a session's chain, an edited one,
--   or its newest one deleted still shows in `audit-verify` as before. A later session with the
--   same pid (after a restart) continues that chain.
-- Transition tables allow one event per trigger: one trigger for INSERT and one for UPDATE (an
-- `INSERT ... ON CONFLICT DO UPDATE` fires both, each with its own rows; an empty one appends nothing).
CREATE FUNCTION lazaretto_audit_observations() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := CASE WHEN TG_OP = 'INSERT' THEN 'decision' ELSE 'decision_revised' END;
    v_kinds text := CASE WHEN TG_OP = 'INSERT' THEN 'decisions' ELSE 'decisions_revised' END;
    v_row  record;
    v_rest jsonb;
BEGIN
    FOR v_row IN SELECT * FROM changed WHERE case_id IS NOT NULL LOOP
        PERFORM lazaretto_audit_append('case:' || v_row.case_id, v_kind, 'policy', to_jsonb(v_row));
    END LOOP;
    SELECT jsonb_agg(to_jsonb(c)) INTO v_rest FROM changed c WHERE c.case_id IS NULL;
    IF v_rest IS NOT NULL THEN
        PERFORM lazaretto_audit_append(
            'decisions:' || pg_backend_pid(), v_kinds, 'policy', jsonb_build_object('observations', v_rest));
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER observations_audit ON observations;
DROP FUNCTION lazaretto_audit_observation();
CREATE TRIGGER observations_audit_insert AFTER INSERT ON observations
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION lazaretto_audit_observations();
CREATE TRIGGER observations_audit_update AFTER UPDATE ON observations
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION lazaretto_audit_observations();
