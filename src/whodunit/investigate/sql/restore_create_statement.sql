-- restore_create_statement.sql — the latest captured CREATE TABLE of a table before it was
-- dropped, whose text can re-create it. No index on the name: a scan of statement, on
-- this rare path only.
-- Parameters: schema_name, table_name (text), before (timestamptz).
SELECT at, id, query
FROM whodunit.statement
WHERE op = 'DDL' AND command_tag = 'CREATE TABLE'
  AND schema_name = %(schema_name)s AND table_name = %(table_name)s
  AND at <= %(before)s
ORDER BY at DESC, id DESC
LIMIT 1;
