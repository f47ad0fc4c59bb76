-- Look-ups by address read cases.ip (the device's current address) beside case_addresses: every
-- observation asks whether a case at its address was released (probation), and the admin search
-- finds cases by address. Without this index each was a scan of every case. The plain list (newest
-- first) reads opened_at.
CREATE INDEX cases_ip ON cases (ip);
CREATE INDEX cases_opened_at ON cases (opened_at);
