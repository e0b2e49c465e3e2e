-- restore_net_single.sql — the net change per key, for a table that one statement of the
-- selection changed: each key appears once, so its change is its net change.
-- Part of restore_classify.sql. Placeholders: {keys} "k1", ….
    SELECT {keys}, r AS target, new_row AS expected, false AS reinserted, key_changed
    FROM change
