-- watch_lock.sql — one watcher per name: a session-level advisory lock, released when the
-- connection closes (also when the watcher dies).
SELECT pg_try_advisory_lock(hashtextextended('whodunit.watch:' || %(name)s, 0))
