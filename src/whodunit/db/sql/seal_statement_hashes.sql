-- seal_statement_hashes.sql — the SHA-256 of each statement in %(ids)s with its row images.
-- The record is the statement row as jsonb plus its row_change rows (key hash, old and
-- new image as stored, in a fixed order: row_change has no id). The caller sets
-- TimeZone and extra_float_digits so the text is the same whoever hashes it.
SELECT s.id, s.txid::text AS txid,
       sha256(convert_to(jsonb_build_object(
           'statement', to_jsonb(s),
           'row_changes', coalesce(rc.images, '[]'::jsonb))::text, 'UTF8')) AS digest
FROM whodunit.statement s
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_array(r.pk_hash, r.old_row::text, r.new_row::text)
                     ORDER BY r.pk_hash, r.old_row::text, r.new_row::text) AS images
    FROM whodunit.row_change r
    WHERE r.statement_id = s.id
) rc ON true
WHERE s.id = ANY (%(ids)s::bigint[])
ORDER BY s.id
