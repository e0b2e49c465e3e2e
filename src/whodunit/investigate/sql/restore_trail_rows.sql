-- restore_trail_rows.sql — how many removed rows the trail holds for statements whose
-- table cannot be written to, for the report of what cannot be restored.
-- Parameters: ids (bigint[]).
SELECT count(*)
FROM unnest(%(ids)s::bigint[]) AS s(id)
JOIN whodunit.row_change rc ON rc.statement_id = s.id
WHERE rc.old_row IS NOT NULL;
