-- Outbox rows of a queue whose Redis does not take them now (its dispatch failed
-- for a reason that may pass, or did not answer in time) wait here, out of the
-- outbox, so the outbox's oldest rows are always rows that can go: however many
-- one queue has waiting, they never fill another queue's batch. The daemon puts
-- them back when the queue answers again; at start and every ten
-- `runtime.sweep_interval`s it puts back the rows of queues it does not see
-- waiting (rows another daemon, or one that stopped, set aside).
CREATE TABLE jobrunner.outbox_held (
    id      uuid PRIMARY KEY REFERENCES jobrunner.jobs (id) ON DELETE CASCADE,
    revive  boolean NOT NULL DEFAULT false,
    queue   text NOT NULL,
    held_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_held_queue_idx ON jobrunner.outbox_held (queue);

SELECT jobrunner.grant_roles();
