-- destructive.sql — the destructive statements of a time window, whole transactions.
-- Destructive: DELETE, TRUNCATE, a DROP command, an UPDATE of at least mass_rows rows.
-- A transaction is taken whole when any of its destructive statements matches the
-- filters, so --table "Profile" still shows the DELETE on "User" that cascaded into it.
-- Cost: one index range scan of statement_at over the window (materialized, read twice).
-- Parameters: since, until (timestamptz or NULL), schema, table, actor (text or NULL),
-- mass_rows.
WITH window_statements AS MATERIALIZED (
    SELECT {statement_columns}
    FROM whodunit.statement s
    WHERE s.at >= coalesce(%(since)s::timestamptz, '-infinity')
      AND s.at < coalesce(%(until)s::timestamptz, 'infinity')
      AND (s.op IN ('DELETE', 'TRUNCATE')
           OR (s.op = 'DDL' AND s.command_tag LIKE 'DROP %%')
           OR (s.op = 'UPDATE' AND s.rows >= %(mass_rows)s::bigint))
), matching AS (
    SELECT DISTINCT w.txid
    FROM window_statements w
    WHERE (%(table)s::text IS NULL
           OR (w.table_name = %(table)s::text AND w.schema_name = %(schema)s::text))
      AND (%(actor)s::text IS NULL
           OR %(actor)s::text IN (w.actor_id, w.actor_name, w.db_session_user, w.db_current_user))
)
SELECT w.*
FROM window_statements w
WHERE w.txid IN (SELECT txid FROM matching)
ORDER BY w.at, w.id;
