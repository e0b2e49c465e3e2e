-- restore_statements.sql — the statements a restore undoes, oldest first.
-- The selection is one of: a statement together with the changes its client statement
-- caused (same transaction, start time, backend and text: ON DELETE CASCADE / SET NULL of
-- other tables, every table of a TRUNCATE or DROP SCHEMA), a transaction, or a time
-- window; optionally narrowed to one table. INSERTs are read too: a row the selection
-- created has no earlier image to go back to, and one it created again is a conflict.
-- A partitioned table's TRUNCATE saves its rows under its partitions' statements.
-- Parameters: statement_id (bigint), txid (text), since, until (timestamptz),
-- schema_name, table_name (text); NULL when not given.
WITH origin AS (
    SELECT at, txid, backend_pid, query FROM whodunit.statement WHERE id = %(statement_id)s
)
SELECT s.id, s.at, s.txid::text AS txid, s.op, s.command_tag, s.schema_name, s.table_name,
       s.rows, s.rows_captured, coalesce(s.actor_name, s.actor_id) AS actor,
       s.db_current_user, s.application_name,
       coalesce((SELECT c.relkind = 'p' FROM pg_class c
                 WHERE c.oid = to_regclass(format('%%I.%%I', s.schema_name, s.table_name))),
                false) AS partitioned
FROM whodunit.statement s
WHERE s.at >= coalesce((SELECT at FROM origin), %(since)s::timestamptz, '-infinity')
  AND s.at <= coalesce((SELECT at FROM origin), 'infinity')
  AND (%(until)s::timestamptz IS NULL OR s.at < %(until)s::timestamptz)
  AND (%(statement_id)s::bigint IS NULL OR EXISTS (
          SELECT FROM origin o
          WHERE o.txid = s.txid AND o.backend_pid = s.backend_pid
            AND o.query IS NOT DISTINCT FROM s.query))
  AND (%(txid)s::xid8 IS NULL OR s.txid = %(txid)s::xid8)
  AND (%(table_name)s::text IS NULL
       OR (s.schema_name = %(schema_name)s AND s.table_name = %(table_name)s))
  AND (s.op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
       OR (s.op = 'DDL' AND s.object_type = 'table' AND s.command_tag LIKE 'DROP %%'))
ORDER BY s.at, s.id;
