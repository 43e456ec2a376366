-- Least privilege: three group roles and the functions through which producers
-- and front ends reach the ledger without any right on its tables.
--
--   jobrunner_producer  enqueue (jobrunner.enqueue, jobrunner.enqueue_many) and
--                       read the status of a job whose id it holds
--                       (jobrunner.job_status, jobrunner.job_statuses)
--   jobrunner_reader    the status of any job, without payloads (the view
--                       jobrunner.statuses and the two functions)
--   jobrunner_daemon    everything the daemon does: the ledger's tables and the
--                       built-in kinds' tables
--
-- The roles are NOLOGIN groups: grant them to your own LOGIN roles. They are
-- created only if absent; a migrating user without CREATEROLE (some managed
-- services) still migrates, and an admin creates the roles later and runs
-- `SELECT jobrunner.grant_roles()` (docs/OPERATIONS.md, "Security").

-- The producers' functions run as their owner, with a search_path nobody can
-- plant objects in, so callers need no right on jobrunner.jobs, jobrunner.outbox
-- or jobrunner.kinds. Every name inside them is schema-qualified already.
ALTER FUNCTION jobrunner.enqueue(text, jsonb, text, timestamptz, int, int, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION jobrunner.enqueue_many(text, jsonb[], text, timestamptz, int, int, text[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- A job's status without its payload: what a producer may read of a job whose id
-- it holds. Ids are the capability: a version 7 UUID carries 74 random bits, so
-- nobody reads a job by guessing its id.
CREATE FUNCTION jobrunner.job_status(job_id uuid)
RETURNS TABLE (
    id uuid, queue text, kind text, status text, priority int, attempts int,
    max_attempts int, run_at timestamptz, unique_key text, result jsonb, last_error text,
    created_at timestamptz, updated_at timestamptz, started_at timestamptz,
    finished_at timestamptz, progress smallint, progress_message text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT j.id, j.queue, j.kind, j.status, j.priority, j.attempts, j.max_attempts, j.run_at,
           j.unique_key, j.result, j.last_error, j.created_at, j.updated_at, j.started_at,
           j.finished_at, j.progress, j.progress_message
    FROM jobrunner.jobs j WHERE j.id = job_status.job_id
$$;

-- The same for many ids at once (a page of a front end's jobs); unknown ids are
-- left out.
CREATE FUNCTION jobrunner.job_statuses(job_ids uuid[])
RETURNS TABLE (
    id uuid, queue text, kind text, status text, priority int, attempts int,
    max_attempts int, run_at timestamptz, unique_key text, result jsonb, last_error text,
    created_at timestamptz, updated_at timestamptz, started_at timestamptz,
    finished_at timestamptz, progress smallint, progress_message text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT j.id, j.queue, j.kind, j.status, j.priority, j.attempts, j.max_attempts, j.run_at,
           j.unique_key, j.result, j.last_error, j.created_at, j.updated_at, j.started_at,
           j.finished_at, j.progress, j.progress_message
    FROM jobrunner.jobs j WHERE j.id = ANY(job_statuses.job_ids)
$$;

-- Every job's status, without payloads, for front ends that list jobs (by
-- status, queue or `updated_at`; the ledger's indexes serve those filters
-- through the view). A view reads with its owner's rights: the reader needs no
-- right on jobrunner.jobs.
CREATE VIEW jobrunner.statuses AS
    SELECT id, queue, kind, status, priority, attempts, max_attempts, run_at, unique_key,
           result, last_error, created_at, updated_at, started_at, finished_at, progress,
           progress_message
    FROM jobrunner.jobs;

-- Functions are executable by PUBLIC unless revoked; in this schema only the
-- grants below open them.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA jobrunner FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA jobrunner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Tables outside the jobrunner schema that the daemon's handlers write (a layer of
-- kinds lists its own in its migrations, then calls grant_roles again).
CREATE TABLE jobrunner.daemon_tables (
    name text PRIMARY KEY
);

-- Grants the three roles (those that exist) what they need. Run by the migration,
-- and again by an admin after creating the roles by hand. Idempotent. Returns
-- the roles it granted to.
CREATE FUNCTION jobrunner.grant_roles() RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    granted text[] := '{}';
    t regclass;
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobrunner_producer') THEN
        GRANT USAGE ON SCHEMA jobrunner TO jobrunner_producer;
        GRANT EXECUTE ON FUNCTION
            jobrunner.enqueue(text, jsonb, text, timestamptz, int, int, text),
            jobrunner.enqueue_many(text, jsonb[], text, timestamptz, int, int, text[]),
            jobrunner.job_status(uuid),
            jobrunner.job_statuses(uuid[])
            TO jobrunner_producer;
        granted := granted || 'jobrunner_producer'::text;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobrunner_reader') THEN
        GRANT USAGE ON SCHEMA jobrunner TO jobrunner_reader;
        GRANT SELECT ON jobrunner.statuses TO jobrunner_reader;
        GRANT EXECUTE ON FUNCTION jobrunner.job_status(uuid), jobrunner.job_statuses(uuid[])
            TO jobrunner_reader;
        granted := granted || 'jobrunner_reader'::text;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobrunner_daemon') THEN
        GRANT USAGE ON SCHEMA jobrunner TO jobrunner_daemon;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA jobrunner TO jobrunner_daemon;
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA jobrunner TO jobrunner_daemon;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA jobrunner TO jobrunner_daemon;
        -- grant_roles itself is an admin's: it grants, the daemon never does.
        REVOKE EXECUTE ON FUNCTION jobrunner.grant_roles() FROM jobrunner_daemon;
        -- The tables a layer of kinds keeps outside this schema, as its own
        -- migrations listed them in jobrunner.daemon_tables; a dropped one is skipped.
        FOR t IN SELECT to_regclass(name) FROM jobrunner.daemon_tables LOOP
            IF t IS NOT NULL THEN
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO jobrunner_daemon', t);
            END IF;
        END LOOP;
        granted := granted || 'jobrunner_daemon'::text;
    END IF;
    RETURN granted;
END
$$;
REVOKE EXECUTE ON FUNCTION jobrunner.grant_roles() FROM PUBLIC;

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['jobrunner_producer', 'jobrunner_reader', 'jobrunner_daemon'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'jobrunner: cannot create role % without CREATEROLE; create it as an admin, then run SELECT jobrunner.grant_roles() (docs/OPERATIONS.md, "Security")', r;
                -- Another database of this cluster created it at the same moment.
                WHEN duplicate_object OR unique_violation THEN
                    NULL;
            END;
        END IF;
    END LOOP;
END
$$;

SELECT jobrunner.grant_roles();
