-- prevention.sql — for each (table, role, op) of an incident: the table's guard, and
-- whether the role may still do it (privilege, ownership for DROP, superuser).
-- Columns are NULL when the table or the role no longer exists.
-- Parameters: schemas, tables, roles (text[], same length).
SELECT t.schema_name, t.table_name, t.role,
       c.oid IS NOT NULL AS table_exists,
       r.rolsuper AS superuser,
       g.max_rows, coalesce(g.no_truncate, false) AS no_truncate,
       coalesce(g.no_drop, false) AS no_drop,
       CASE WHEN c.oid IS NOT NULL AND r.oid IS NOT NULL
            THEN has_table_privilege(r.oid, c.oid, 'DELETE') END AS may_delete,
       CASE WHEN c.oid IS NOT NULL AND r.oid IS NOT NULL
            THEN has_table_privilege(r.oid, c.oid, 'UPDATE') END AS may_update,
       CASE WHEN c.oid IS NOT NULL AND r.oid IS NOT NULL
            THEN has_table_privilege(r.oid, c.oid, 'TRUNCATE') END AS may_truncate,
       CASE WHEN c.oid IS NOT NULL AND r.oid IS NOT NULL
            THEN pg_has_role(r.oid, c.relowner, 'USAGE') END AS owns
FROM unnest(%(schemas)s::text[], %(tables)s::text[], %(roles)s::text[])
     AS t(schema_name, table_name, role)
LEFT JOIN pg_namespace n ON n.nspname = t.schema_name
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
                    AND c.relkind IN ('r', 'p')
LEFT JOIN pg_roles r ON r.rolname = t.role
LEFT JOIN whodunit.guard g ON g.schema_name = t.schema_name AND g.table_name = t.table_name;
