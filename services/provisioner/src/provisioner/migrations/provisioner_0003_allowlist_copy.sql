-- The executor's copy of policy's allowlist (allowlist.changed.v1) is part of provisioner's schema: it
-- survives restarts and upgrades, and the provisioner gardens nobody until it holds one. An installation
-- whose service created the table at start already has it (same columns): kept as it is.
CREATE TABLE IF NOT EXISTS lazaretto_allowlist_copy (
    id          int         PRIMARY KEY CHECK (id = 1),
    version     bigint      NOT NULL,
    entries     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
