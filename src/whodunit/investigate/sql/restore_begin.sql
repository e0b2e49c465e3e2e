-- restore_begin.sql — the restore transaction's own settings. Deferrable constraints are
-- checked at COMMIT, so rows of tables that reference each other can go back in any
-- order; application_name marks the restore's statements in the trail (beside the actor
-- whodunit-restore that the app context carries).
SET CONSTRAINTS ALL DEFERRED;
SELECT set_config('application_name', 'whodunit restore', true);
