-- cmts-agent's own copy of policy's allowlist (allowlist.changed.v1): one row, the newest snapshot.
-- A reset of an allow-listed modem, or of one with an allow-listed device behind it, is refused.
CREATE TABLE cmts_allowlist_copy (
    id          int         PRIMARY KEY CHECK (id = 1),
    version     bigint      NOT NULL,
    entries     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
