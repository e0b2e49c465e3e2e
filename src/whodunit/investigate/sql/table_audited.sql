-- table_audited.sql — find an audited table by the name an engineer typed.
-- Matches whodunit.audited_table by name as PostgreSQL would resolve it (parse_ident: quoted
-- keeps case, unquoted folds), then case-insensitively, so `User` finds "User"; schemas on
-- the search path win. Parameters: name (text).
WITH wanted AS (
    SELECT p[cardinality(p)] AS table_name,
           CASE WHEN cardinality(p) > 1 THEN p[cardinality(p) - 1] END AS schema_name
    FROM parse_ident(%(name)s) AS p
)
SELECT a.schema_name, a.table_name, a.key_columns
FROM whodunit.audited_table a, wanted w
WHERE lower(a.table_name) = lower(w.table_name)
  AND (w.schema_name IS NULL OR lower(a.schema_name) = lower(w.schema_name))
ORDER BY a.table_name = w.table_name DESC,
         a.schema_name IS NOT DISTINCT FROM w.schema_name DESC,
         array_position(current_schemas(false), a.schema_name::name) NULLS LAST,
         a.schema_name
LIMIT 1;
