-- Items the daemon read from outside (Redis ingest entries, for now) and could not
-- record as a job, not even as a dead one: an ingest entry that is no UUID, or a job
-- whose row Postgres refused. Kept for admins (`jobrunner quarantine`,
-- `jobrunner inspect ID`, the metric jobrunner_quarantined_total) instead of being
-- retried forever or dropped silently. `raw` is an escaped, truncated rendering of
-- what was read, never the bytes themselves.
CREATE TABLE jobrunner.quarantine (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    source  text NOT NULL,
    queue   text,
    job_id  uuid,
    raw     text NOT NULL,
    error   text NOT NULL
);

CREATE INDEX quarantine_job_id_idx ON jobrunner.quarantine (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX quarantine_at_idx ON jobrunner.quarantine (at);
