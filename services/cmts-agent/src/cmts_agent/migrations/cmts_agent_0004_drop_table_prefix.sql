-- cmts-agent has a database and a role of its own (lazaretto_cmts): no other service's tables share it,
-- so its tables drop the `cmts_` prefix they had when they lived in policy's database. Renaming keeps
-- every row, the sequences' positions and the constraints; an installation upgrades in place.
ALTER TABLE cmts_modems RENAME TO modems;
ALTER INDEX cmts_modems_pkey RENAME TO modems_pkey;
ALTER INDEX cmts_modems_by_cmts RENAME TO modems_by_cmts;

ALTER TABLE cmts_cpes RENAME TO cpes;
ALTER INDEX cmts_cpes_pkey RENAME TO cpes_pkey;
ALTER INDEX cmts_cpes_by_cm RENAME TO cpes_by_cm;
ALTER INDEX cmts_cpes_by_ip RENAME TO cpes_by_ip;
ALTER INDEX cmts_cpes_by_cmts RENAME TO cpes_by_cmts;

ALTER TABLE cmts_reset_steps RENAME TO reset_steps;
ALTER INDEX cmts_reset_steps_pkey RENAME TO reset_steps_pkey;
ALTER TABLE reset_steps RENAME CONSTRAINT cmts_reset_steps_state_check TO reset_steps_state_check;

ALTER TABLE cmts_reset_intents RENAME TO reset_intents;
ALTER INDEX cmts_reset_intents_pkey RENAME TO reset_intents_pkey;
ALTER INDEX cmts_reset_intents_by_mac RENAME TO reset_intents_by_mac;
ALTER SEQUENCE cmts_reset_intents_id_seq RENAME TO reset_intents_id_seq;

ALTER TABLE cmts_allowlist_copy RENAME TO allowlist_copy;
ALTER INDEX cmts_allowlist_copy_pkey RENAME TO allowlist_copy_pkey;
ALTER TABLE allowlist_copy RENAME CONSTRAINT cmts_allowlist_copy_id_check TO allowlist_copy_id_check;
