-- statement_columns.sql — the columns of whodunit.statement (alias s) every question reads.
-- A fragment: the other queries include it as {statement_columns}, so every row they
-- return builds the same Who and How (queries.who_from, queries.how_from).
s.id, s.at, s.txid::text AS txid, s.op, s.command_tag, s.schema_name, s.table_name, s.rows,
s.rows_captured, s.object_identity, s.query, s.db_session_user, s.db_current_user,
host(s.client_addr) AS client_addr, s.application_name, s.backend_pid, s.actor_id,
s.actor_name, s.correlation_id, s.trace_id, s.request_method, s.request_path, s.client_ip,
s.user_agent
