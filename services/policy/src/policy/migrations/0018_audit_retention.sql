-- The audit log's retention (audit_retention.py): a chain's oldest links go once they are older than
-- LAZARETTO_AUDIT_RETENTION_DAYS, and the chain then starts at its anchor instead of at seq 1 from 32
-- zero bytes: the seq of the last link deleted and that link's hash, which the chain's next link
-- carries as its prev_hash. A chain whose every link went keeps its head and its anchor, equal.
-- Each cut is also recorded in the chain `retention:audit` (never purged): an anchor no purge
-- recorded shows in audit-verify.
CREATE TABLE audit_anchors (
    chain text  PRIMARY KEY,
    seq   int   NOT NULL,
    hash  bytea NOT NULL
);

-- A link's body as JSON, or NULL when it is not JSON (an edited row): the purge reads each link's
-- hashed time with it, in the database, so a page of large links costs policy's event loop nothing.
CREATE FUNCTION lazaretto_audit_body(p_body text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN p_body::jsonb;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END $$;
