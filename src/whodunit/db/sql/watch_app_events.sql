-- watch_app_events.sql — the next page of application events committed between two
-- positions, in (at, id) order (see watch_statements.sql); %(failures)s keeps failures only.
SELECT id, at, txid::text AS txid, action, resource_type, resource_id, outcome,
       left(error, %(snippet)s) AS error, details, db_session_user, db_current_user,
       host(client_addr) AS client_addr, application_name, actor_id, actor_name,
       correlation_id, client_ip
FROM whodunit.app_event
WHERE at >= %(after_at)s
  AND (at, id) > (%(after_at)s, %(after_id)s)
  AND NOT pg_visible_in_snapshot(txid, %(since)s::pg_snapshot)
  AND pg_visible_in_snapshot(txid, %(until)s::pg_snapshot)
  AND (NOT %(failures)s OR outcome = 'failure')
ORDER BY at, id
LIMIT %(limit)s
