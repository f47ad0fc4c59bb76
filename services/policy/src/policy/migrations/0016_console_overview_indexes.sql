-- The console's overview (`console.queries.overview`, reloaded every 30 s when live) counts the cases
-- that entered quarantine in the last hour and the last hour's self-releases, and lists the open cases
-- needing an operator or held, oldest first. Case events, self-releases and closed cases are kept for
-- good (the case history), and no index led to the hour: on 100,000 cases (3,000 open) both counts
-- read every event and every self-release ever recorded (697,000 events, 42 ms; 97,000 self-releases,
-- 4 ms), and the list's generic plan (a prepared statement may settle on it) walked every case by
-- opening time, closed ones first (97,400 rows, 9 ms). Each now reads only the hour, or the open cases.
-- The predicate is the count's own (a case's transition into quarantine, not a stay in it).
CREATE INDEX case_events_into_quarantine ON case_events (at)
    WHERE to_state = 'quarantined' AND from_state IS DISTINCT FROM 'quarantined';
CREATE INDEX self_releases_at ON self_releases (at);
CREATE INDEX cases_open_oldest ON cases (opened_at) WHERE closed_at IS NULL;
