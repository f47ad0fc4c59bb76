-- An executor's answer names the step it answers, and policy finds the case by it (`store.CASE_BY_STEP`,
-- `FOR UPDATE`): without an index every garden and reset result read the whole cases table, open and
-- closed (bench-policy: 120,000 cases, about 1,000 answers in its 1,000/s phase). Only a case with a
-- step in flight has a step id.
CREATE INDEX cases_step ON cases (step_id) WHERE step_id IS NOT NULL;
