-- watch_checkpoint_load.sql — where the watcher %(name)s stopped, if it ever ran.
SELECT snapshot::text AS snapshot, floor, sessions, history_from, statement_id, app_event_id
FROM whodunit.watch_checkpoint
WHERE name = %(name)s
