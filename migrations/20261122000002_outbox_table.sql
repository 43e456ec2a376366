-- The outbox becomes its own small table. Marking a wide, five-index jobs row
-- "dispatched" cost a full row version per job; inserting and deleting a
-- one-index outbox row is far cheaper and leaves the jobs table less bloated.

CREATE TABLE jobrunner.outbox (
    id uuid PRIMARY KEY REFERENCES jobrunner.jobs (id) ON DELETE CASCADE
);

INSERT INTO jobrunner.outbox (id)
SELECT id FROM jobrunner.jobs
WHERE NOT dispatched AND status IN ('scheduled', 'queued', 'retrying', 'running');

DROP INDEX jobrunner.jobs_outbox_idx;
ALTER TABLE jobrunner.jobs DROP COLUMN dispatched;

CREATE OR REPLACE FUNCTION jobrunner.enqueue(
    kind         text,
    payload      jsonb,
    queue        text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    priority     int         DEFAULT 0,
    max_attempts int         DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    new_id   uuid := jobrunner.uuid_v7();
    defaults jobrunner.kinds%ROWTYPE;
    target   text;
BEGIN
    IF enqueue.kind IS NULL OR enqueue.kind = '' THEN
        RAISE EXCEPTION 'jobrunner.enqueue: kind must not be empty';
    END IF;
    SELECT * INTO defaults FROM jobrunner.kinds k WHERE k.kind = enqueue.kind;
    target := COALESCE(enqueue.queue, defaults.queue, 'default');
    INSERT INTO jobrunner.jobs (id, queue, kind, payload, status, priority, max_attempts, run_at)
    VALUES (
        new_id,
        target,
        enqueue.kind,
        COALESCE(enqueue.payload, '{}'::jsonb),
        CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END,
        COALESCE(enqueue.priority, 0),
        COALESCE(enqueue.max_attempts, defaults.max_attempts, 25),
        COALESCE(enqueue.run_at, now())
    );
    INSERT INTO jobrunner.outbox (id) VALUES (new_id);
    -- One notification per queue per transaction: Postgres folds duplicates.
    PERFORM pg_notify('jobrunner_enqueued', target);
    RETURN new_id;
END
$$;
