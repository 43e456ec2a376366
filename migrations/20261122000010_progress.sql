-- Progress a running job reports (JobContext::progress): a percentage and a short
-- note, shown by `jobrunner status`, GET /jobs/{id} and `progress` events. Both
-- stay NULL for jobs that never report; the last value reported is kept.
ALTER TABLE jobrunner.jobs
    ADD COLUMN progress smallint CHECK (progress BETWEEN 0 AND 100),
    ADD COLUMN progress_message text;
