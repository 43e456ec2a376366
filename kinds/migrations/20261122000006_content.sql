-- Tables of the `content-generation` kind: a campaign plans a month of social
-- posts; the kind drafts them into content_posts and sets the campaign's status.
-- They live in the public schema because the marketing system owns and reads
-- them; jobrunner only writes the drafts and the status.

CREATE TABLE content_campaigns (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant         text NOT NULL,
    month          text NOT NULL CHECK (month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    topic          text NOT NULL,
    brand          text,
    channels       text[] NOT NULL,
    posts_per_week int  NOT NULL CHECK (posts_per_week BETWEEN 1 AND 21),
    timezone       text NOT NULL DEFAULT 'UTC',
    -- 'template', 'openai', or 'default' for the daemon's content_generation.generator.
    generator      text NOT NULL DEFAULT 'template',
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'generating', 'ready', 'failed')),
    last_error     text,
    -- The job that last worked on the campaign, so a UI can link to its status.
    job_id         uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX content_campaigns_month_idx ON content_campaigns (month);
CREATE INDEX content_campaigns_updated_at_idx ON content_campaigns (updated_at);

CREATE TABLE content_posts (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id   uuid NOT NULL REFERENCES content_campaigns (id) ON DELETE CASCADE,
    scheduled_for timestamptz NOT NULL,
    channel       text NOT NULL,
    title         text NOT NULL,
    body          text NOT NULL,
    hashtags      text[] NOT NULL,
    status        text NOT NULL DEFAULT 'draft',
    -- One post per channel and moment; the kind relies on it to never duplicate.
    -- Its index also serves "the posts of a campaign" (campaign_id leads).
    UNIQUE (campaign_id, channel, scheduled_for)
);
