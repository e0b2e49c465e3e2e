-- restore_upsert.sql — put rows of {table} back, overwriting the rows that hold their keys
-- now (--on-conflict overwrite).
-- Placeholders: {table}; {work}; {columns}, {values} as in restore_insert.sql; {keys} the
-- primary key's columns; {set_columns} "b", …; {excluded} "excluded"."b", ….
-- Parameters: actions (text[]).
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE
SELECT {values}
FROM {work} AS w
WHERE w.action = ANY (%(actions)s::text[])
ON CONFLICT ({keys}) DO UPDATE SET ({set_columns}) = ROW ({excluded});
