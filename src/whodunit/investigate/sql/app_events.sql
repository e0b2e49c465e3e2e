-- app_events.sql — application events (@audit_log, logins) by the same filters as the
-- statements, plus an action list and failures only, oldest first.
-- Cost: partial indexes on correlation_id and (actor_id, at) (schema v2), else app_event_at.
-- Parameters: actors (text[] or NULL), db_user, client_addr, correlation_id (text or
-- NULL), actions (text[] or NULL), failures (boolean), since, until (timestamptz or
-- NULL), limit.
SELECT e.id, e.at, e.action, e.resource_type, e.resource_id, e.outcome, e.error,
       e.details, e.db_session_user, e.db_current_user, host(e.client_addr) AS client_addr,
       e.application_name, e.backend_pid, e.actor_id, e.actor_name, e.correlation_id,
       e.trace_id, e.request_method, e.request_path, e.client_ip, e.user_agent
FROM whodunit.app_event e
WHERE e.at >= coalesce(%(since)s::timestamptz, '-infinity')
  AND e.at < coalesce(%(until)s::timestamptz, 'infinity')
  AND (%(actors)s::text[] IS NULL
       OR e.actor_id = ANY (%(actors)s::text[]) OR e.actor_name = ANY (%(actors)s::text[])
       OR (e.action LIKE 'auth.%%' AND e.resource_id = ANY (%(actors)s::text[])))
  AND (%(db_user)s::text IS NULL
       OR e.db_session_user = %(db_user)s::text OR e.db_current_user = %(db_user)s::text)
  AND (%(client_addr)s::text IS NULL
       OR e.client_addr = %(client_addr)s::inet OR e.client_ip = %(client_addr)s::text)
  AND (%(correlation_id)s::text IS NULL OR e.correlation_id = %(correlation_id)s::text)
  AND (%(actions)s::text[] IS NULL OR e.action = ANY (%(actions)s::text[]))
  AND (NOT %(failures)s::boolean OR e.outcome = 'failure')
ORDER BY e.at, e.id
LIMIT %(limit)s;
