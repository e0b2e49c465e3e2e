-- restore_classify.sql — decide, row by row, what restoring {table} means, into {work};
-- return how many rows got each action.
-- A key's changes in the selection, oldest first: the first one's old image is what the
-- row was before (the target; none when the selection created the row), the last one's
-- new image is what the selection left (none when it removed the row); restore_net_*.sql
-- reduce the changes to one row per key. Set against the row as it is now, that gives the
-- action:
--   insert       removed by the selection, still gone
--   revert       updated by the selection, not changed since
--   unchanged    already as it was before
--   exists       conflict: a row with that key exists again
--   changed      conflict: updated by the selection, changed again since
--   gone         conflict: updated by the selection, deleted since
--   created      the selection created it: nothing to go back to
--   key_changed  an UPDATE changed its key: not restored
-- Each image is populated once, here: the key comes from the typed row, and the row is
-- kept for the INSERT or UPDATE that writes it back. Rows are compared as jsonb of the
-- table's own types, so neither the time zone a timestamptz was written in nor how a
-- number was spelled makes a difference.
-- Placeholders: {table}; {work}; {keys_from_r} "r"."id" AS "k1", …; net, one of
-- restore_net_*.sql; {match} "x"."id" = "n"."k1" AND …; {first_key} "x"."id".
-- Parameters: ids (bigint[], oldest first), keys (text[]).
WITH change AS (
    SELECT s.ord, rc.old_row, rc.new_row, r, {keys_from_r},
           rc.old_row IS NOT NULL AND rc.new_row IS NOT NULL
           AND whodunit.key_text(rc.old_row, %(keys)s::text[])
               IS DISTINCT FROM whodunit.key_text(rc.new_row, %(keys)s::text[]) AS key_changed
    FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS s(id, ord)
    JOIN whodunit.row_change rc ON rc.statement_id = s.id
    CROSS JOIN LATERAL json_populate_record(NULL::{table}, coalesce(rc.old_row, rc.new_row)) AS r
), net AS (
{net}
), decided AS (
    INSERT INTO {work} (action, rec)
    SELECT CASE WHEN n.target IS NULL THEN 'created'
                WHEN n.key_changed THEN 'key_changed'
                WHEN {first_key} IS NULL THEN
                    CASE WHEN n.expected IS NULL THEN 'insert' ELSE 'gone' END
                WHEN to_jsonb(x) = to_jsonb(n.target) THEN 'unchanged'
                WHEN n.reinserted OR n.expected IS NULL THEN 'exists'
                WHEN to_jsonb(x) = to_jsonb(json_populate_record(NULL::{table}, n.expected))
                    THEN 'revert'
                ELSE 'changed'
           END,
           n.target
    FROM net n
    LEFT JOIN {table} x ON {match}
    RETURNING action
)
SELECT action, count(*) FROM decided GROUP BY action;
