-- restore_table.sql — what restore needs to know of a table as it is now: its oid; its
-- primary key's columns in key order; the columns an INSERT may write (generated ones are
-- computed) and those an UPDATE may set (not GENERATED ALWAYS AS IDENTITY either);
-- whether its changes are audited and whether a guard could refuse them.
-- No row: no such table.
-- Parameters: schema_name, table_name (text).
SELECT c.oid AS relid,
       coalesce((SELECT array_agg(a.attname::text ORDER BY u.ord)
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS u(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS key_columns,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''), '{}') AS insert_columns,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '' AND a.attidentity <> 'a'), '{}') AS update_columns,
       EXISTS (SELECT FROM whodunit.audited_table t WHERE t.relid = c.oid) AS audited,
       EXISTS (SELECT FROM whodunit.guard g
               WHERE g.schema_name = n.nspname AND g.table_name = c.relname) AS guarded
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema_name)s AND c.relname = %(table_name)s AND c.relkind IN ('r', 'p');
