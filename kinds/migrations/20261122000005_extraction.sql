-- Tables of the built-in `data-extraction` kind (public schema: the data-mining
-- application owns and reads them; jobrunner only fills them in).

-- One search: a topic and the pages to look for it on. The application inserts
-- the row and enqueues `data-extraction` with {"query_id": id}.
CREATE TABLE public.extraction_queries (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant        text NOT NULL,
    search_topic  text NOT NULL,
    -- A JSON array of http(s) URLs.
    sources       jsonb NOT NULL CHECK (jsonb_typeof(sources) = 'array'),
    status        text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    -- Rows in extraction_results for this query, set when a run ends.
    result_count  int NOT NULL DEFAULT 0,
    -- [{"source": url, "error": text}] of the last run; null when every source was read.
    source_errors jsonb,
    -- The job that last ran this query.
    job_id        uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Front ends read "what changed since" and a tenant's queries.
CREATE INDEX extraction_queries_updated_at_idx ON public.extraction_queries (updated_at);
CREATE INDEX extraction_queries_tenant_idx ON public.extraction_queries (tenant, created_at);

-- What a run found. A URL appears once per query, so re-running a query updates
-- its rows instead of adding copies.
CREATE TABLE public.extraction_results (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    query_id     uuid NOT NULL REFERENCES public.extraction_queries (id) ON DELETE CASCADE,
    -- The source (as listed in the query) the record was found through.
    source_url   text,
    url          text NOT NULL,
    title        text,
    snippet      text,
    emails       text[] NOT NULL DEFAULT '{}',
    phones       text[] NOT NULL DEFAULT '{}',
    extracted_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (query_id, url)
);
