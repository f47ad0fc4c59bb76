-- policy-finish (issues 11, 12): the garden mode a rule fixed for its case, and the abuse reports the
-- maildir watcher took in.

-- "full" or "smtp_block" (a spam-only garden); the release removes the mode the apply had.
ALTER TABLE case_terms ADD COLUMN garden text NOT NULL DEFAULT 'full' CHECK (garden IN ('full', 'smtp_block'));

-- One row per maildir message turned into an observation (keyed by the message's unique maildir
-- name): a crash between the commit and the move to cur/ never queues it twice.
CREATE TABLE report_intake (
    message_key    text        PRIMARY KEY,
    observation_id uuid        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
