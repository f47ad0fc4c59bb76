-- Cases belong to a device, not to an address (issue 8). A case is keyed by the CPE MAC (scope
-- cpe), the CM MAC (scope modem) or, only for a device no lease or CMTS table knows, by its address.
-- Addresses become facts with validity intervals; self-releases are counted per device.
ALTER TABLE cases ADD COLUMN key_kind text CHECK (key_kind IN ('cpe_mac', 'cm_mac', 'address'));
ALTER TABLE cases ADD COLUMN device_key text;
UPDATE cases SET
    key_kind = CASE
        WHEN scope = 'modem' AND cm_mac IS NOT NULL THEN 'cm_mac'
        WHEN cpe_mac IS NOT NULL THEN 'cpe_mac'
        ELSE 'address' END,
    device_key = CASE
        WHEN scope = 'modem' AND cm_mac IS NOT NULL THEN cm_mac
        WHEN cpe_mac IS NOT NULL THEN cpe_mac
        ELSE host(ip) END;
-- Cases opened per address before this migration may name one device twice while open: the oldest
-- keeps the device key, the others stay open keyed by their address (and say so in their audit).
WITH ranked AS (
    SELECT case_id, row_number() OVER (PARTITION BY key_kind, device_key ORDER BY opened_at, case_id) AS n
    FROM cases WHERE closed_at IS NULL AND key_kind <> 'address'
), demoted AS (
    UPDATE cases c SET key_kind = 'address', device_key = host(c.ip)
    FROM ranked r WHERE r.case_id = c.case_id AND r.n > 1
    RETURNING c.case_id, c.state
)
INSERT INTO case_events (case_id, actor, from_state, to_state, detail)
SELECT case_id, 'migration', state, state,
       '{"reason": "another open case already holds this device: kept keyed by its address"}'::jsonb
FROM demoted;
ALTER TABLE cases ALTER COLUMN key_kind SET NOT NULL;
ALTER TABLE cases ALTER COLUMN device_key SET NOT NULL;
DROP INDEX cases_one_open_per_ip;
CREATE UNIQUE INDEX cases_one_open_per_device ON cases (key_kind, device_key) WHERE closed_at IS NULL;
CREATE INDEX cases_cpe_mac ON cases (cpe_mac);
CREATE INDEX cases_cm_mac ON cases (cm_mac);

-- Every address the device held during the case: the one the alert named, its leases, the CMTS
-- table's, the one an operator named. valid_until NULL = still held as far as policy knows.
CREATE TABLE case_addresses (
    case_id     uuid        NOT NULL REFERENCES cases (case_id),
    ip          inet        NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz,
    source      text        NOT NULL CHECK (source IN ('alert', 'lease', 'cmts', 'operator')),
    PRIMARY KEY (case_id, ip, valid_from)
);
CREATE INDEX case_addresses_ip ON case_addresses (ip);
INSERT INTO case_addresses (case_id, ip, valid_from, valid_until, source)
SELECT case_id, ip, opened_at, closed_at, 'alert' FROM cases;

-- What attribution found for an observation (holders, conflict, age), kept for the audit.
ALTER TABLE observations ADD COLUMN attribution jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Self-releases per device across cases (a release closes its case, so a per-case count resets).
CREATE TABLE self_releases (
    id          bigserial   PRIMARY KEY,
    key_kind    text        NOT NULL,
    device_key  text        NOT NULL,
    case_id     uuid        NOT NULL REFERENCES cases (case_id),
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX self_releases_device ON self_releases (key_kind, device_key, at);
INSERT INTO self_releases (key_kind, device_key, case_id, at)
SELECT c.key_kind, c.device_key, e.case_id, e.at
FROM case_events e JOIN cases c USING (case_id)
WHERE e.actor LIKE 'subscriber:%' AND e.to_state = 'release_requested';
