-- The id a job has in the system it came from, for jobs the daemon took from
-- another queue format (today: arq's client, source 'arq'; origin is the arq
-- queue). The arq id "order-7" of job 3f1c… is found with
--   SELECT job_id FROM jobrunner.external_ids WHERE source = 'arq' AND external_id = 'order-7';
-- A row goes when its job is deleted (retention, purge).
CREATE TABLE jobrunner.external_ids (
    job_id      uuid PRIMARY KEY REFERENCES jobrunner.jobs (id) ON DELETE CASCADE,
    source      text NOT NULL,
    external_id text NOT NULL,
    origin      text NOT NULL
);

CREATE INDEX external_ids_lookup_idx ON jobrunner.external_ids (source, external_id);
