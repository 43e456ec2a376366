-- The built-in kinds' tables, for the jobrunner_daemon role: listed where the
-- ledger's jobrunner.grant_roles() finds them, then granted (when the role exists).
INSERT INTO jobrunner.daemon_tables (name) VALUES
    ('public.conversations'), ('public.messages'),
    ('public.extraction_queries'), ('public.extraction_results'),
    ('public.content_campaigns'), ('public.content_posts')
ON CONFLICT DO NOTHING;

SELECT jobrunner.grant_roles();
