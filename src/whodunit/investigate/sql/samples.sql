-- samples.sql — a few removed rows of each statement, as they were before.
-- One BRIN lookup per statement (row_change_statement), stopping after n rows.
-- Parameters: ids (bigint[]), n (int).
SELECT s.id, r.old_row
FROM unnest(%(ids)s::bigint[]) AS s(id)
CROSS JOIN LATERAL (
    SELECT rc.old_row
    FROM whodunit.row_change rc
    WHERE rc.statement_id = s.id AND rc.old_row IS NOT NULL
    LIMIT %(n)s
) r;
