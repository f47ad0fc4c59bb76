-- Desired state of the garden, per layer: what each layer should hold and whether it confirmed it.
-- A row with present = false is a removal: kept so that reconcile still checks a layer that can
-- only look elements up (dhcpd over OMAPI) and cannot list what it holds.
CREATE TABLE garden_desired (
    layer        text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('mac', 'ip')),
    value        text        NOT NULL,
    case_id      uuid,                 -- NULL: the provisioner's own (a quarantine pool's trigger)
    present      boolean     NOT NULL,
    confirmed_at timestamptz,          -- the layer last matched `present` then; NULL = still to do
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (layer, kind, value)
);
CREATE INDEX garden_desired_case ON garden_desired (case_id);
CREATE INDEX garden_desired_pending ON garden_desired (layer) WHERE confirmed_at IS NULL;
