-- Cron fire times, one row per (schedule, fire time): the primary key is what
-- makes a fire time enqueue exactly one job however many daemons run the
-- schedule. The daemon inserts the row and enqueues the job in one transaction.

CREATE TABLE jobrunner.cron_fires (
    schedule text        NOT NULL,
    fire_at  timestamptz NOT NULL,
    -- Set in the same transaction as the insert; NULL is never committed.
    job_id   uuid,
    fired_at timestamptz NOT NULL DEFAULT now(),
    -- `jobrunner cron run NAME`: fire_at is when it was asked for, not a fire time
    -- of the schedule, and catch-up ignores the row.
    manual   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (schedule, fire_at)
);
