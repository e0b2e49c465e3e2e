-- table_in_trail.sql — a table that is no longer audited (dropped, or excluded since) but
-- left rows in the trail. Its key columns are gone from whodunit.audited_table, so they
-- are inferred from one stored row: the column whose value hashes to the row's pk_hash
-- (a one-column key), else none (the whole row, or a composite key, shown as no key).
-- Reads statement without an index on the name: one pass over statement, on this rare
-- path only. Parameters: name (text).
WITH wanted AS (
    SELECT p[cardinality(p)] AS table_name,
           CASE WHEN cardinality(p) > 1 THEN p[cardinality(p) - 1] END AS schema_name
    FROM parse_ident(%(name)s) AS p
), latest AS (
    SELECT s.id, s.schema_name, s.table_name
    FROM whodunit.statement s, wanted w
    WHERE lower(s.table_name) = lower(w.table_name)
      AND (w.schema_name IS NULL OR lower(s.schema_name) = lower(w.schema_name))
      AND EXISTS (SELECT FROM whodunit.row_change rc WHERE rc.statement_id = s.id)
    ORDER BY s.table_name = w.table_name DESC, s.at DESC, s.id DESC
    LIMIT 1
)
SELECT l.schema_name, l.table_name,
       coalesce((SELECT ARRAY[k]
                 FROM whodunit.row_change rc,
                      json_object_keys(coalesce(rc.old_row, rc.new_row)) AS k
                 WHERE rc.statement_id = l.id
                   AND hashtextextended(coalesce(rc.old_row, rc.new_row) ->> k, 0) = rc.pk_hash
                 LIMIT 1), ARRAY[]::text[]) AS key_columns
FROM latest l;
