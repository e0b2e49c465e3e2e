-- 0003_context_once.sql — schema version 3: parse the app context once per statement.
-- Version 1's context_columns let the planner pull its subquery up into the ten output
-- columns, so whodunit.parse_context (plpgsql, not constant-folded inside a trigger) ran
-- ten times per audited statement: about 0.3 ms for each statement that carried a context.
-- OFFSET 0 keeps the subquery (and its single parse) where it is.

SET LOCAL ROLE whodunit;

CREATE OR REPLACE FUNCTION whodunit.context_columns(raw text)
RETURNS TABLE (actor_id text, actor_name text, correlation_id text, trace_id text,
               request_method text, request_path text, client_ip text, user_agent text,
               context jsonb, context_error text)
LANGUAGE sql STABLE AS $$
    SELECT c.ctx ->> 'actor_id', c.ctx ->> 'actor_name', c.ctx ->> 'correlation_id',
           c.ctx ->> 'trace_id', c.ctx ->> 'method', c.ctx ->> 'path',
           c.ctx ->> 'client_ip', c.ctx ->> 'user_agent',
           nullif(c.ctx - ARRAY['actor_id', 'actor_name', 'correlation_id', 'trace_id',
                                'method', 'path', 'client_ip', 'user_agent'], '{}'),
           CASE WHEN c.raw IS NOT NULL AND c.ctx IS NULL THEN left(c.raw, 8192) END
    FROM (SELECT r.raw, CASE WHEN r.raw IS NOT NULL THEN whodunit.parse_context(r.raw) END
          FROM (SELECT nullif(raw, '') AS raw) r
          OFFSET 0) AS c(raw, ctx)
$$;

RESET ROLE;

UPDATE whodunit.meta SET value = '3' WHERE key = 'schema_version';
