-- restore_update.sql — set updated rows of {table} back, from {work}, by key.
-- Placeholders: {table}; {work}; {set_columns} "b", …; {set_values} ("w"."rec")."b", …;
-- {match} "x"."id" = ("w"."rec")."id" AND ….
-- Parameters: actions (text[]).
UPDATE {table} AS x SET ({set_columns}) = ROW ({set_values})
FROM {work} AS w
WHERE w.action = ANY (%(actions)s::text[]) AND {match};
