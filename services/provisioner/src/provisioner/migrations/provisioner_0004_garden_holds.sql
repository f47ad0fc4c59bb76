-- Which cases hold each garden element: a PC can be under its own case (cpe_mac) and its household's
-- (cm_mac) at once, and releasing one must not un-garden what the other still holds. A remove drops its
-- case's hold; the element leaves the layers only once no case holds it. garden_desired.case_id stays
-- (the last case to change the row) for the readers that use it.
-- Safe on a running install: a new table, filled from the rows every case applied so far (one case per
-- element: overlaps recorded before this migration are known only by their last case).
CREATE TABLE IF NOT EXISTS garden_hold (
    kind       text        NOT NULL,
    value      text        NOT NULL,
    case_id    uuid        NOT NULL,
    held_since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value, case_id)
);
CREATE INDEX IF NOT EXISTS garden_hold_case ON garden_hold (case_id);
INSERT INTO garden_hold (kind, value, case_id)
SELECT DISTINCT kind, value, case_id FROM garden_desired WHERE present AND case_id IS NOT NULL
ON CONFLICT DO NOTHING;
