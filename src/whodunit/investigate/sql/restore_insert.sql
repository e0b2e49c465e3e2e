-- restore_insert.sql — put rows of {table} back, from {work}, where they were populated
-- from their images. OVERRIDING SYSTEM VALUE keeps the ids of GENERATED ALWAYS AS
-- IDENTITY columns; generated columns are left out of {columns} and computed again.
-- Placeholders: {table}; {work}; {columns} "a", …; {values} ("w"."rec")."a", ….
-- Parameters: actions (text[]).
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE
SELECT {values}
FROM {work} AS w
WHERE w.action = ANY (%(actions)s::text[]);
