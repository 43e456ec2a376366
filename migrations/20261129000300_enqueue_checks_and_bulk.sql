-- Enqueue refuses what the daemon cannot carry, costs less, and comes in bulk.
--
-- Every value is checked at the door with an error that names the argument
-- (SQLSTATE 22023, invalid_parameter_value): a job the ledger accepts is a job
-- the daemon can dispatch and run. jsonb itself refuses U+0000.

-- The rules, in one place, for enqueue and enqueue_many. `fn` names the caller in
-- the messages. Returns true so that plpgsql can call it as a plain expression.
CREATE FUNCTION jobrunner.check_job(
    fn           text,
    kind         text,
    payload      jsonb,
    queue        text,
    run_at       timestamptz,
    priority     int,
    max_attempts int,
    unique_key   text
) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF kind IS NULL OR kind !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION '%: kind % must be 1-64 letters, digits, dots, dashes or underscores',
            fn, COALESCE(quote_literal(left(kind, 80)), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF queue !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION '%: queue % must be 1-64 letters, digits, dots, dashes or underscores',
            fn, quote_literal(left(queue, 80)) USING ERRCODE = '22023';
    END IF;
    IF NOT (run_at >= '1970-01-01 00:00:00+00' AND run_at < '10000-01-01 00:00:00+00') THEN
        RAISE EXCEPTION '%: run_at % is outside the years 1970 to 9999', fn, run_at
            USING ERRCODE = '22023';
    END IF;
    IF priority NOT BETWEEN -1000 AND 1000 THEN
        RAISE EXCEPTION '%: priority % must be from -1000 to 1000', fn, priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts < 1 THEN
        RAISE EXCEPTION '%: max_attempts % must be at least 1 (NULL takes the kind''s default)',
            fn, max_attempts USING ERRCODE = '22023';
    END IF;
    IF octet_length(unique_key) > 1024 THEN
        RAISE EXCEPTION '%: unique_key is % bytes long, at most 1024 are allowed',
            fn, octet_length(unique_key) USING ERRCODE = '22023';
    END IF;
    -- Handlers decode payloads with a nesting limit; the Redis ENQUEUE script
    -- refuses the same depth.
    IF jsonb_path_exists(payload, 'strict $.**{100}') THEN
        RAISE EXCEPTION '%: payload nests deeper than 100 levels', fn USING ERRCODE = '22023';
    END IF;
    RETURN true;
END
$$;

-- As before, with the checks; without a unique key the insert needs no
-- arbiter (ON CONFLICT) and no loop. The id is made here, not returned by the
-- insert, so producers need no SELECT privilege on jobrunner.jobs.
CREATE OR REPLACE FUNCTION jobrunner.enqueue(
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
    new_id   uuid;
    got      uuid;
    d_queue  text;
    d_tries  int;
    d_key    text;
    target   text;
    body     jsonb := COALESCE(enqueue.payload, '{}'::jsonb);
    ukey     text := NULLIF(enqueue.unique_key, '');
    checked  boolean;
BEGIN
    SELECT k.queue, k.max_attempts, k.unique_key INTO d_queue, d_tries, d_key
    FROM jobrunner.kinds k WHERE k.kind = enqueue.kind;
    target := COALESCE(enqueue.queue, d_queue, 'default');
    IF ukey IS NULL AND d_key IS NOT NULL THEN
        ukey := jobrunner.render_unique_key(d_key, body);
    END IF;
    checked := jobrunner.check_job('jobrunner.enqueue', enqueue.kind, body, target,
        enqueue.run_at, enqueue.priority, enqueue.max_attempts, ukey);
    IF ukey IS NULL THEN
        new_id := jobrunner.uuid_v7();
        INSERT INTO jobrunner.jobs (id, queue, kind, payload, status, priority, max_attempts, run_at)
        VALUES (new_id, target, enqueue.kind, body,
                CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END,
                COALESCE(enqueue.priority, 0),
                COALESCE(enqueue.max_attempts, d_tries, 25),
                COALESCE(enqueue.run_at, now()));
        INSERT INTO jobrunner.outbox (id) VALUES (new_id);
        -- One notification per queue per transaction: Postgres folds duplicates.
        PERFORM pg_notify('jobrunner_enqueued', target);
        RETURN new_id;
    END IF;
    -- While an unfinished job holds the key, return its id and add nothing. The
    -- insert arbitrates on the partial unique index; if the holder finished
    -- between the insert and the re-read, try again.
    new_id := jobrunner.uuid_v7();
    FOR round IN 1..20 LOOP
        INSERT INTO jobrunner.jobs
            (id, queue, kind, payload, status, priority, max_attempts, run_at, unique_key)
        VALUES (
            new_id, target, enqueue.kind, body,
            CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END,
            COALESCE(enqueue.priority, 0),
            COALESCE(enqueue.max_attempts, d_tries, 25),
            COALESCE(enqueue.run_at, now()),
            ukey)
        ON CONFLICT (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'retrying')
            DO NOTHING
        RETURNING id INTO got;
        IF got IS NOT NULL THEN
            INSERT INTO jobrunner.outbox (id) VALUES (new_id);
            PERFORM pg_notify('jobrunner_enqueued', target);
            RETURN new_id;
        END IF;
        -- Each statement reads a fresh snapshot (READ COMMITTED), so a holder
        -- committed by a concurrent call is visible here.
        SELECT j.id INTO got FROM jobrunner.jobs j
        WHERE j.unique_key = ukey AND j.status IN ('scheduled', 'queued', 'running', 'retrying');
        IF got IS NOT NULL THEN
            RETURN got;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'jobrunner.enqueue: unique_key % stays contended (is the transaction REPEATABLE READ?)', ukey;
END
$$;

-- Many jobs of one kind in one call: one row per payload, the options of
-- `enqueue` applied to each (`unique_keys`, if given, holds one key per payload).
-- Returns the ids in the order of `payloads`; a payload whose key an unfinished
-- job holds gets that job's id, as with `enqueue`. Every element is checked
-- first: one bad element refuses the whole call, and the error names its index.
CREATE FUNCTION jobrunner.enqueue_many(
    kind         text,
    payloads     jsonb[],
    queue        text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    priority     int         DEFAULT 0,
    max_attempts int         DEFAULT NULL,
    unique_keys  text[]      DEFAULT NULL
) RETURNS uuid[]
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n        int := COALESCE(cardinality(enqueue_many.payloads), 0);
    ids      uuid[];
    keys     text[];
    d_queue  text;
    d_tries  int;
    d_key    text;
    target   text;
    bad      bigint;
    checked  boolean;
BEGIN
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    SELECT k.queue, k.max_attempts, k.unique_key INTO d_queue, d_tries, d_key
    FROM jobrunner.kinds k WHERE k.kind = enqueue_many.kind;
    target := COALESCE(enqueue_many.queue, d_queue, 'default');
    checked := jobrunner.check_job('jobrunner.enqueue_many', enqueue_many.kind, NULL, target,
        enqueue_many.run_at, enqueue_many.priority, enqueue_many.max_attempts, NULL);
    IF n > 100000 THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: % payloads in one call, at most 100000 are allowed', n
            USING ERRCODE = '22023';
    END IF;
    IF array_ndims(enqueue_many.payloads) > 1 THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: payloads must be a one-dimensional array'
            USING ERRCODE = '22023';
    END IF;
    SELECT i INTO bad FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS p(v, i)
    WHERE jsonb_path_exists(v, 'strict $.**{100}') ORDER BY i LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: payloads[%] nests deeper than 100 levels; nothing was enqueued', bad
            USING ERRCODE = '22023';
    END IF;

    IF enqueue_many.unique_keys IS NULL AND d_key IS NULL THEN
        -- No keys: one statement for every job row, outbox row and the
        -- notification. Nothing is read back from jobs (no SELECT privilege needed).
        WITH rows AS MATERIALIZED (
            SELECT jobrunner.uuid_v7() AS id, COALESCE(p.v, '{}'::jsonb) AS payload, p.i
            FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS p(v, i)),
        j AS (
            INSERT INTO jobrunner.jobs (id, queue, kind, payload, status, priority, max_attempts, run_at)
            SELECT r.id, target, enqueue_many.kind, r.payload,
                   CASE WHEN enqueue_many.run_at > now() THEN 'scheduled' ELSE 'queued' END,
                   COALESCE(enqueue_many.priority, 0),
                   COALESCE(enqueue_many.max_attempts, d_tries, 25),
                   COALESCE(enqueue_many.run_at, now())
            FROM rows r ORDER BY r.i),
        o AS (INSERT INTO jobrunner.outbox (id) SELECT r.id FROM rows r)
        SELECT array_agg(r.id ORDER BY r.i) INTO ids
        FROM rows r, LATERAL (SELECT pg_notify('jobrunner_enqueued', target)) n;
        RETURN ids;
    END IF;

    IF enqueue_many.unique_keys IS NOT NULL
       AND cardinality(enqueue_many.unique_keys) <> n THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: unique_keys has % elements, payloads has %',
            cardinality(enqueue_many.unique_keys), n USING ERRCODE = '22023';
    END IF;
    keys := ARRAY(
        SELECT COALESCE(NULLIF(enqueue_many.unique_keys[p.i], ''),
                        jobrunner.render_unique_key(d_key, COALESCE(p.v, '{}'::jsonb)))
        FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS p(v, i) ORDER BY p.i);
    SELECT i INTO bad FROM unnest(keys) WITH ORDINALITY AS k(v, i)
    WHERE octet_length(v) > 1024 ORDER BY i LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: unique_keys[%] is longer than 1024 bytes; nothing was enqueued', bad
            USING ERRCODE = '22023';
    END IF;
    -- With keys, each job goes through enqueue's arbitration, in order, so two
    -- payloads with one key in the same call give one job.
    ids := array_fill(NULL::uuid, ARRAY[n]);
    FOR i IN 1..n LOOP
        ids[i] := jobrunner.enqueue(enqueue_many.kind, enqueue_many.payloads[i], target,
            enqueue_many.run_at, enqueue_many.priority, enqueue_many.max_attempts,
            COALESCE(keys[i], ''));
    END LOOP;
    RETURN ids;
END
$$;
