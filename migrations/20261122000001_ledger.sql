-- The jobrunner ledger: every job's row, the system of record for its status.

CREATE SCHEMA IF NOT EXISTS jobrunner;

-- A time-ordered UUID (version 7), so new rows land at the right edge of the
-- primary-key index and ids sort by creation time.
CREATE FUNCTION jobrunner.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Per-kind defaults the daemon copies from its config at start-up, so SQL
-- producers that name only a kind land on the right queue.
CREATE TABLE jobrunner.kinds (
    kind         text PRIMARY KEY,
    queue        text NOT NULL,
    max_attempts int  NOT NULL CHECK (max_attempts >= 1),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobrunner.jobs (
    id           uuid PRIMARY KEY DEFAULT jobrunner.uuid_v7(),
    queue        text NOT NULL CHECK (queue ~ '^[A-Za-z0-9._-]{1,64}$'),
    kind         text NOT NULL CHECK (kind ~ '^[A-Za-z0-9._-]{1,64}$'),
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'queued' CHECK (status IN
                   ('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    priority     int  NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    attempts     int  NOT NULL DEFAULT 0,
    max_attempts int  NOT NULL DEFAULT 25 CHECK (max_attempts >= 1),
    run_at       timestamptz NOT NULL DEFAULT now(),
    unique_key   text,
    result       jsonb,
    last_error   text,
    -- Fencing token of the attempt this row reflects; a status write carrying an
    -- older token is ignored, so a stale worker cannot overwrite a newer attempt.
    lease_token  bigint,
    -- Outbox flag: false until the dispatcher has put the job into Redis.
    dispatched   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);

-- The reads the CLI and front ends make.
CREATE INDEX jobs_status_idx       ON jobrunner.jobs (status, created_at);
CREATE INDEX jobs_queue_status_idx ON jobrunner.jobs (queue, status, created_at);
CREATE INDEX jobs_updated_at_idx   ON jobrunner.jobs (updated_at);
-- The outbox: committed jobs not yet in Redis. Small, because rows leave it at once.
CREATE INDEX jobs_outbox_idx       ON jobrunner.jobs (created_at) WHERE NOT dispatched;

-- Enqueue inside the caller's transaction: nothing is visible to the daemon until
-- the caller commits, and a rollback enqueues nothing.
CREATE FUNCTION jobrunner.enqueue(
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
    -- One notification per queue per transaction: Postgres folds duplicates.
    PERFORM pg_notify('jobrunner_enqueued', target);
    RETURN new_id;
END
$$;
