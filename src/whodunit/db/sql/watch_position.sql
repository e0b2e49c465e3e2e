-- watch_position.sql — where the trail stands now: a snapshot, and the sessions that may
-- still commit rows stamped before it was taken (see whodunit.watch_position()).
SELECT snapshot::text AS snapshot, taken_at, running, prepared, open, still_prepared
FROM whodunit.watch_position()
