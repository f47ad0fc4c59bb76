-- The portal's side of a case (issue 13): a short human reference and the subscriber's appeals.
--
-- `reference`: `LZ-` + 6 Crockford base32 symbols from the case id's first 32 bits (policy.reference
-- computes the same for new cases). Should two existing cases share one, the later takes the symbols
-- of its id's last 32 bits, as policy does on a collision.
ALTER TABLE cases ADD COLUMN reference text;
-- word 0: the id's first 32 bits; word 1: its last 32 bits (the fallback on a collision).
CREATE FUNCTION lz_case_reference(case_id uuid, word int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'LZ-' || substr(s, 1, 4) || '-' || substr(s, 5, 2) FROM (
        SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((bits >> (25 - 5 * i)) & 31)::int + 1, 1),
                          '' ORDER BY i) AS s
        FROM (SELECT (('x' || substr(replace(case_id::text, '-', ''), CASE WHEN word = 0 THEN 1 ELSE 25 END, 8))
                      ::bit(32)::bigint & 4294967295) >> 2 AS bits) AS b,
             generate_series(0, 5) AS i) AS symbols
$$;
WITH ranked AS (
    SELECT case_id, row_number() OVER (PARTITION BY lz_case_reference(case_id, 0) ORDER BY opened_at, case_id) AS n
    FROM cases
)
UPDATE cases c SET reference = lz_case_reference(c.case_id, CASE WHEN r.n = 1 THEN 0 ELSE 1 END)
FROM ranked r WHERE r.case_id = c.case_id;
-- A row written without one (an older writer, a hand-made fix) gets the derived reference.
CREATE FUNCTION lz_case_reference_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reference IS NULL THEN
        NEW.reference := lz_case_reference(NEW.case_id, 0);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER cases_reference_default BEFORE INSERT ON cases
    FOR EACH ROW EXECUTE FUNCTION lz_case_reference_default();
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
