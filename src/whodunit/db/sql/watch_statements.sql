-- watch_statements.sql — the next page of statements committed between two positions, in
-- (at, id) order: rows of transactions finished in %(until)s but not in %(since)s.
-- `at >= %(after_at)s` lets the index on `at` start the scan where the last page ended;
-- %(ops)s (NULL: every op) narrows the read to what the detectors' look-back keeps.
SELECT id, at, txid::text AS txid, op, schema_name, table_name, rows, rows_captured,
       command_tag, object_type, object_identity, left(query, %(snippet)s) AS query,
       db_session_user, db_current_user, host(client_addr) AS client_addr, application_name,
       backend_pid, actor_id, actor_name, correlation_id, client_ip
FROM whodunit.statement
WHERE at >= %(after_at)s
  AND (at, id) > (%(after_at)s, %(after_id)s)
  AND NOT pg_visible_in_snapshot(txid, %(since)s::pg_snapshot)
  AND pg_visible_in_snapshot(txid, %(until)s::pg_snapshot)
  AND (%(ops)s::text[] IS NULL OR op = ANY (%(ops)s::text[]))
ORDER BY at, id
LIMIT %(limit)s
