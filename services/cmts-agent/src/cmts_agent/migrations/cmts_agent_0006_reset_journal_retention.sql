-- The reset journal is purged after a retention (`journal.PURGE_RESET_INTENTS`,
-- `steps.PURGE_RESET_STEPS`), oldest first in batches, each batch found through one of these indexes.
-- Only intents with an outcome are ever purged: one without is the record a crashed run left (the
-- modem is looked at before anything is sent), kept until a later reset of the modem settles it.
CREATE INDEX reset_intents_finished ON reset_intents (finished_at) WHERE outcome IS NOT NULL;
CREATE INDEX reset_steps_updated ON reset_steps (updated_at);
