-- timeline_statements.sql — the audited statements of one actor, DB role, client address
-- or correlation id, oldest first.
-- Cost: the correlation id and the app actor (actor_id) have partial indexes (schema v2);
-- a DB role or a client address is filtered within the window's statement_at range scan.
-- Parameters: actors (text[] or NULL: an app user's ids and/or names), db_user,
-- client_addr, correlation_id (text or NULL), since, until (timestamptz or NULL), limit.
SELECT {statement_columns}
FROM whodunit.statement s
WHERE s.at >= coalesce(%(since)s::timestamptz, '-infinity')
  AND s.at < coalesce(%(until)s::timestamptz, 'infinity')
  AND (%(actors)s::text[] IS NULL
       OR s.actor_id = ANY (%(actors)s::text[]) OR s.actor_name = ANY (%(actors)s::text[]))
  AND (%(db_user)s::text IS NULL
       OR s.db_session_user = %(db_user)s::text OR s.db_current_user = %(db_user)s::text)
  AND (%(client_addr)s::text IS NULL
       OR s.client_addr = %(client_addr)s::inet OR s.client_ip = %(client_addr)s::text)
  AND (%(correlation_id)s::text IS NULL OR s.correlation_id = %(correlation_id)s::text)
ORDER BY s.at, s.id
LIMIT %(limit)s;
