-- The per-CMTS hourly budget counts the CMTS's SETs of the last hour that may have reached a modem
-- (`journal.CMTS_RESETS_LAST_HOUR`, before every reset SET, under the CMTS's lock): with only the
-- per-modem index it read the whole journal, which is never purged (200,000 rows: 2,062 pages, 35 ms,
-- every reset on that CMTS queued behind it). Only `counted` rows count, so only they are indexed.
CREATE INDEX reset_intents_by_cmts ON reset_intents (cmts, intent_at) WHERE counted;
