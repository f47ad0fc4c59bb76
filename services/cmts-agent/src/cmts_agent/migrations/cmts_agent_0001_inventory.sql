-- cmts-agent's tables (prefixed while the agent could share a database with policy; 0003 drops the prefix).
-- Which CMTS serves which cable modem, as last walked (docsIfCmtsCmStatusTable / docsIf3CmtsCmRegStatusTable).
CREATE TABLE cmts_modems (
    cm_mac        text        PRIMARY KEY,
    cmts          text        NOT NULL,
    status_table  text        NOT NULL,          -- docsis2 | docsis3
    row_index     bigint      NOT NULL,          -- docsIfCmtsCmStatusIndex or docsIf3CmtsCmRegStatusId
    ip            text,
    status_value  integer,
    online        boolean     NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cmts_modems_by_cmts ON cmts_modems (cmts);

-- CPE -> CM as the CMTS knows it (cdxCmCpeTable, casaCmtsCmCpeTable, cadIfCmtsMacToIpTable).
CREATE TABLE cmts_cpes (
    cpe_mac  text        PRIMARY KEY,
    cm_mac   text        NOT NULL,
    cmts     text        NOT NULL,
    ip       text,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cmts_cpes_by_cm ON cmts_cpes (cm_mac);
CREATE INDEX cmts_cpes_by_ip ON cmts_cpes (ip);
CREATE INDEX cmts_cpes_by_cmts ON cmts_cpes (cmts);

-- One row per reset command (step id): `sent` once a reset SET was accepted, `done` with the
-- published result, so a redelivered command never resets the modem a second time.
CREATE TABLE cmts_reset_steps (
    step_id     uuid        PRIMARY KEY,
    case_id     uuid        NOT NULL,
    cm_mac      text        NOT NULL,
    cmts        text,
    method      text,
    state       text        NOT NULL CHECK (state IN ('sent', 'done')),
    sent_at     timestamptz,
    result_type text,
    result      jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
