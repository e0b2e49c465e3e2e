-- row_deletions.sql — the DELETE, TRUNCATE and DROP TABLE statements that removed one row.
-- There is no index on row_change.pk_hash (it would slow every audited write). The
-- table's destructive statements in the window are few, so they are found first (the
-- window through statement_at, then by name and op) and each is searched for the key on
-- its own: a parameterized BRIN lookup of its rows (row_change_statement), never a pass
-- over all of row_change. The key text itself guards against hash collisions.
-- Parameters: schema, table, key (the key text), keys (key columns), since, until
-- (timestamptz or NULL).
WITH candidates AS MATERIALIZED (
    SELECT {statement_columns}
    FROM whodunit.statement s
    WHERE s.at >= coalesce(%(since)s::timestamptz, '-infinity')
      AND s.at < coalesce(%(until)s::timestamptz, 'infinity')
      AND s.schema_name = %(schema)s
      AND s.table_name = %(table)s
      AND (s.op IN ('DELETE', 'TRUNCATE') OR (s.op = 'DDL' AND s.rows_captured > 0))
)
SELECT c.*, r.old_row, NULL::json AS new_row
FROM candidates c
CROSS JOIN LATERAL (
    SELECT rc.old_row
    FROM whodunit.row_change rc
    WHERE rc.statement_id = c.id
      AND rc.pk_hash = hashtextextended(%(key)s, 0)
      AND whodunit.key_text(rc.old_row, %(keys)s::text[]) = %(key)s
    LIMIT 1
) r
ORDER BY c.at, c.id;
