-- restore_workspace.sql — the scratch table of one table's restore: one row per row to
-- decide on, with the action decided and the row to write back, already of the table's
-- own type (populated once from its image, then written as it is). Named after the
-- table's oid, so a second restore in the same transaction finds it of the right type
-- and empties it; dropped at the end of the transaction.
-- Placeholders: {work} (the scratch table), {table}.
CREATE TEMP TABLE IF NOT EXISTS {work} (action text NOT NULL, rec {table}) ON COMMIT DROP;
TRUNCATE {work};
