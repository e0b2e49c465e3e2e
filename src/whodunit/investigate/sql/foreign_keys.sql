-- foreign_keys.sql — which of the given tables reference which, and what a DELETE of the
-- referenced row does to the referencing one (confdeltype: c cascade, n set null,
-- d set default), to tell a statement from the cascades it caused.
-- Parameters: schemas, tables (text[], same length: the tables of one incident).
WITH wanted AS (
    SELECT c.oid
    FROM unnest(%(schemas)s::text[], %(tables)s::text[]) AS t(schema_name, table_name)
    JOIN pg_namespace n ON n.nspname = t.schema_name
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
)
SELECT cn.nspname AS child_schema, c.relname AS child_table,
       pn.nspname AS parent_schema, p.relname AS parent_table,
       k.confdeltype::text AS on_delete
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = k.confrelid
JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE k.contype = 'f'
  AND k.conrelid IN (SELECT oid FROM wanted)
  AND k.confrelid IN (SELECT oid FROM wanted);
