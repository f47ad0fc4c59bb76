-- lazaretto: outside-transaction
-- Observations no case took are purged after LAZARETTO_OBSERVATION_RETENTION_DAYS (`retention.py`),
-- oldest first: by the later of when the observation was last seen and when its newest revision was
-- decided (a revision still coming in keeps it; a late delivery is kept from its arrival). No index led
-- there: observations_ip starts at the address, observations_dry_run holds only dry runs, and
-- observations_case only the rows the purge keeps. A case-less row that a case later takes leaves
-- this index by the update that sets its case_id. Built concurrently (outside a transaction): the
-- replicas of the version before keep storing decisions while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS observations_caseless_age
    ON observations (GREATEST(last_seen, decided_at)) WHERE case_id IS NULL;
