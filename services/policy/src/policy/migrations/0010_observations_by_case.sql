-- The KPI "first alert to garden in effect" reads a case's observations when its garden is confirmed:
-- an index on the rows that belong to a case (most observations belong to none).
CREATE INDEX observations_case ON observations (case_id) WHERE case_id IS NOT NULL;
