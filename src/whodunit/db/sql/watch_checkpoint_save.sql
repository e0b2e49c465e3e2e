-- watch_checkpoint_save.sql — record where the watcher %(name)s stopped.
INSERT INTO whodunit.watch_checkpoint AS c
    (name, snapshot, floor, sessions, history_from, statement_id, app_event_id, updated_at)
VALUES (%(name)s, %(snapshot)s::pg_snapshot, %(floor)s, %(sessions)s, %(history_from)s,
        %(statement_id)s, %(app_event_id)s, now())
ON CONFLICT (name) DO UPDATE
SET snapshot = EXCLUDED.snapshot, floor = EXCLUDED.floor, sessions = EXCLUDED.sessions,
    history_from = EXCLUDED.history_from, statement_id = EXCLUDED.statement_id,
    app_event_id = EXCLUDED.app_event_id, updated_at = EXCLUDED.updated_at
