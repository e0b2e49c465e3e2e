-- restore_classify_keyless.sql — the same decision for a table without a primary key,
-- into {work}; returns how many rows got each action. Without a key a row cannot be told
-- from its copies: every removed row is put back ('insert', no conflict check), and an
-- updated row cannot be found again ('no_key').
-- Placeholders: {table}, {work}. Parameters: ids (bigint[]).
WITH decided AS (
    INSERT INTO {work} (action, rec)
    SELECT CASE WHEN rc.new_row IS NULL THEN 'insert' ELSE 'no_key' END, r
    FROM unnest(%(ids)s::bigint[]) AS s(id)
    JOIN whodunit.row_change rc ON rc.statement_id = s.id
    CROSS JOIN LATERAL json_populate_record(NULL::{table}, rc.old_row) AS r
    WHERE rc.old_row IS NOT NULL
    RETURNING action
)
SELECT action, count(*) FROM decided GROUP BY action;
