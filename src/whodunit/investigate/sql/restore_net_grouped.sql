-- restore_net_grouped.sql — the net change per key, for a table that several statements
-- changed: per key, the row before the first change (none when it was an INSERT), the
-- last change's new image, whether a later INSERT created the row again, and whether an
-- UPDATE changed the key. Keys only INSERTed by the selection are left out: there is
-- nothing to put back.
-- Part of restore_classify.sql. Placeholders: {keys} "k1", ….
    SELECT {keys},
           (array_agg(CASE WHEN old_row IS NOT NULL THEN r END ORDER BY ord))[1] AS target,
           (array_agg(new_row ORDER BY ord DESC))[1] AS expected,
           bool_or(old_row IS NULL) AS reinserted,
           bool_or(key_changed) AS key_changed
    FROM change
    GROUP BY {keys}
    HAVING bool_or(old_row IS NOT NULL)
