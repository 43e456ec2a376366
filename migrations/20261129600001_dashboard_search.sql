-- The dashboard's search by unique key covers finished jobs too; the unique index
-- (jobs_unique_key_idx) holds only unfinished ones. Partial: only jobs that carry
-- a key pay for it on insert.
CREATE INDEX jobs_unique_key_all_idx ON jobrunner.jobs (unique_key, created_at)
    WHERE unique_key IS NOT NULL;
