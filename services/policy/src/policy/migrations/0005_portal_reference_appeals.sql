-- The portal's side of a case (issue 13): a short human reference and the subscriber's appeals.
--
-- `reference`: `LZ-` + 6 Crockford base32 symbols from the case id's first 32 bits (policy.reference
-- computes the same for new cases). Should two existing cases share one, the later takes the symbols
-- of its id's last 32 bits, as policy does on a collision.
ALTER TABLE cases ADD COLUMN reference text;
CREATE FUNCTION pg_temp.lz_reference(hex text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'LZ-' || substr(s, 1, 4) || '-' || substr(s, 5, 2) FROM (
        SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ',
                                 (((('x' || hex)::bit(32)::bigint & 4294967295) >> 2 >> (25 - 5 * i)) & 31)::int + 1,
                                 1), '' ORDER BY i) AS s
        FROM generate_series(0, 5) AS i) AS symbols
$$;
WITH ranked AS (
    SELECT case_id, replace(case_id::text, '-', '') AS hex,
           row_number() OVER (PARTITION BY pg_temp.lz_reference(substr(replace(case_id::text, '-', ''), 1, 8))
                              ORDER BY opened_at, case_id) AS n
    FROM cases
)
UPDATE cases c SET reference = pg_temp.lz_reference(
    CASE WHEN r.n = 1 THEN substr(r.hex, 1, 8) ELSE substr(r.hex, 25, 8) END)
FROM ranked r WHERE r.case_id = c.case_id;
ALTER TABLE cases ALTER COLUMN reference SET NOT NULL;
CREATE UNIQUE INDEX cases_reference ON cases (reference);

-- "I think this is a mistake": the subscriber's own words for the abuse desk, one row per appeal
-- (audited as a case event that names the row); counted per device for the rate limit.
CREATE TABLE appeals (
    appeal_id   bigserial   PRIMARY KEY,
    case_id     uuid        NOT NULL REFERENCES cases (case_id),
    key_kind    text        NOT NULL,
    device_key  text        NOT NULL,
    client_ip   inet        NOT NULL,
    language    text        NOT NULL,
    message     text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appeals_case ON appeals (case_id, appeal_id);
CREATE INDEX appeals_device ON appeals (key_kind, device_key, at);
