-- seal_last.sql — the end of a watcher's chain: what the next seal links to.
SELECT id, until::text AS until, hash
FROM whodunit.seal
WHERE watcher = %(watcher)s
ORDER BY id DESC
LIMIT 1
