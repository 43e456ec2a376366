-- Admin reads and retention.

-- Every attempt's error, oldest first: [{"attempt": 1, "error": "...", "at": "..."}].
-- The status writer appends to it in the same batched UPDATE that records a
-- retrying, dead or lease-expired transition; `last_error` keeps the latest one.
-- A constant default makes this a catalogue change: no table rewrite.
ALTER TABLE jobrunner.jobs ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';

-- `jobrunner jobs --kind K`, newest first. The other listings need no new index:
-- they read jobs_status_idx / jobs_queue_status_idx one status at a time (see
-- ledger/admin.rs). Only this one was added because every index costs every
-- insert and every status write (no update is HOT: updated_at is indexed).
CREATE INDEX jobs_kind_created_idx ON jobrunner.jobs (kind, created_at);
