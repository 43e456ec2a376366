-- Flow control: unique jobs, paused queues (docs/FLOW_CONTROL.md).

-- At most one unfinished job per unique key. Finished jobs leave the index, so
-- the same key may be enqueued again once its job has ended.
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobrunner.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'retrying');

-- A kind's unique-key template, e.g. 'contact:{from}' (placeholders name top-level
-- payload fields), copied from [kinds.NAME] unique_key by the daemon at start-up.
ALTER TABLE jobrunner.kinds ADD COLUMN unique_key text;

-- Paused queues. Redis holds the flag the fetch script honours; this table keeps
-- it when Redis loses its data, and the daemon puts it back on recovery.
CREATE TABLE jobrunner.queue_pauses (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- Renders a unique-key template against a payload: each {field} becomes the
-- payload's top-level field as text. A missing, null or empty field means "no
-- uniqueness" (NULL): jobs that lack the field are never merged with each other.
CREATE FUNCTION jobrunner.render_unique_key(template text, payload jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    field    text;
    value    text;
    rendered text := template;
BEGIN
    IF template IS NULL THEN
        RETURN NULL;
    END IF;
    FOR field IN SELECT (regexp_matches(template, '\{([^{}]+)\}', 'g'))[1] LOOP
        value := CASE WHEN jsonb_typeof(payload) = 'object' THEN payload ->> field END;
        IF value IS NULL OR value = '' THEN
            RETURN NULL;
        END IF;
        rendered := replace(rendered, '{' || field || '}', value);
    END LOOP;
    RETURN rendered;
END
$$;

DROP FUNCTION jobrunner.enqueue(text, jsonb, text, timestamptz, int, int);

-- As before, plus unique_key: while an unfinished job holds the key (given, or
-- rendered from the kind's template), the call returns that job's id and adds
-- nothing. Safe under concurrent calls: the insert arbitrates on the partial
-- unique index, and if the holder finished between the insert and the re-read,
-- the loop tries again.
CREATE FUNCTION jobrunner.enqueue(
    kind         text,
    payload      jsonb,
    queue        text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    priority     int         DEFAULT 0,
    max_attempts int         DEFAULT NULL,
    unique_key   text        DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id   uuid := jobrunner.uuid_v7();
    got      uuid;
    defaults jobrunner.kinds%ROWTYPE;
    target   text;
    body     jsonb := COALESCE(enqueue.payload, '{}'::jsonb);
    ukey     text;
BEGIN
    IF enqueue.kind IS NULL OR enqueue.kind = '' THEN
        RAISE EXCEPTION 'jobrunner.enqueue: kind must not be empty';
    END IF;
    SELECT * INTO defaults FROM jobrunner.kinds k WHERE k.kind = enqueue.kind;
    target := COALESCE(enqueue.queue, defaults.queue, 'default');
    ukey := COALESCE(NULLIF(enqueue.unique_key, ''),
                     jobrunner.render_unique_key(defaults.unique_key, body));
    FOR round IN 1..20 LOOP
        INSERT INTO jobrunner.jobs
            (id, queue, kind, payload, status, priority, max_attempts, run_at, unique_key)
        VALUES (
            new_id,
            target,
            enqueue.kind,
            body,
            CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END,
            COALESCE(enqueue.priority, 0),
            COALESCE(enqueue.max_attempts, defaults.max_attempts, 25),
            COALESCE(enqueue.run_at, now()),
            ukey
        )
        ON CONFLICT (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'retrying')
            DO NOTHING
        RETURNING id INTO got;
        IF got IS NOT NULL THEN
            INSERT INTO jobrunner.outbox (id) VALUES (new_id);
            -- One notification per queue per transaction: Postgres folds duplicates.
            PERFORM pg_notify('jobrunner_enqueued', target);
            RETURN new_id;
        END IF;
        -- Another unfinished job holds the key: hand back its id. Each statement
        -- reads a fresh snapshot (READ COMMITTED), so a holder committed by a
        -- concurrent call is visible here.
        SELECT j.id INTO got FROM jobrunner.jobs j
        WHERE j.unique_key = ukey AND j.status IN ('scheduled', 'queued', 'running', 'retrying');
        IF got IS NOT NULL THEN
            RETURN got;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'jobrunner.enqueue: unique_key % stays contended (is the transaction REPEATABLE READ?)', ukey;
END
$$;
