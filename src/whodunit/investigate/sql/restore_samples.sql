-- restore_samples.sql — a few rows of a table that will not be restored as they are
-- (conflicts, changed keys), for the report to name by key.
-- Placeholders: {work}. Parameters: limit (integer).
SELECT action, to_json(rec)
FROM {work}
WHERE action IN ('exists', 'changed', 'gone', 'key_changed')
ORDER BY action
LIMIT %(limit)s;
