-- row_changes.sql — every audited change of one row (INSERT, UPDATE, DELETE, TRUNCATE and
-- DROP TABLE snapshots), oldest first.
-- There is no index on row_change.pk_hash (it would slow every audited write), so the
-- table's statements are found first (by name, within the window through statement_at),
-- then their rows: through the BRIN index on statement_id when the table has few
-- statements, else (the planner's choice) in one pass over row_change. pk_hash is
-- compared row by row; the key text itself guards against hash collisions.
-- Parameters: schema, table, key (the key text), keys (key columns), since, until
-- (timestamptz or NULL).
SELECT {statement_columns}, rc.old_row, rc.new_row
FROM whodunit.statement s
JOIN whodunit.row_change rc ON rc.statement_id = s.id
WHERE s.schema_name = %(schema)s
  AND s.table_name = %(table)s
  AND s.at >= coalesce(%(since)s::timestamptz, '-infinity')
  AND s.at < coalesce(%(until)s::timestamptz, 'infinity')
  AND rc.pk_hash = hashtextextended(%(key)s, 0)
  AND whodunit.key_text(coalesce(rc.old_row, rc.new_row), %(keys)s::text[]) = %(key)s
ORDER BY s.at, s.id;
