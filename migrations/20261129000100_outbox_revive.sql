-- A row put back in the outbox by a retry revives a job that ended. Redis keeps a
-- short-lived tombstone for every job that ended, which makes a late or repeated
-- dispatch of it a no-op; a revived job's dispatch must pass that tombstone.
ALTER TABLE jobrunner.outbox ADD COLUMN revive boolean NOT NULL DEFAULT false;
