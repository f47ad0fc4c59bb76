-- A closed case's enforce_at and expires_at drive nothing (the loops act only on open cases), but they
-- were cleared only when a loop fired: every case closed before its delay or expiry ran out (released
-- by its subscriber or an operator, held and dropped, allow-listed) stayed in the partial indexes
-- `case_terms_enforce_due` and `case_terms_expiry_due`, which `store.due_enforcements` and
-- `store.due_expiries` walk every second, growing for good. Closing a case now clears them
-- (`store.save_transition`); this clears those of the cases closed before.
UPDATE case_terms t SET enforce_at = NULL, expires_at = NULL
FROM cases c
WHERE c.case_id = t.case_id AND c.closed_at IS NOT NULL
  AND (t.enforce_at IS NOT NULL OR t.expires_at IS NOT NULL);
