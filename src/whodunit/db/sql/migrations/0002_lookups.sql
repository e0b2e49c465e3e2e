-- 0002_lookups.sql — schema version 2: what investigations look things up by.
-- Adds partial indexes for the correlation id and the acting user (only statements that
-- carry an app context pay for them) and the view whodunit.change, one row per changed
-- row with its statement's who/when/how, for people querying the trail by hand.

SET LOCAL ROLE whodunit;

CREATE INDEX IF NOT EXISTS statement_correlation_id ON whodunit.statement (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS statement_actor_id ON whodunit.statement (actor_id, at)
    WHERE actor_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS app_event_correlation_id ON whodunit.app_event (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS app_event_actor_id ON whodunit.app_event (actor_id, at)
    WHERE actor_id IS NOT NULL;

CREATE OR REPLACE VIEW whodunit.change AS
SELECT s.id AS statement_id, s.at, s.txid, s.op, s.command_tag, s.schema_name, s.table_name,
       rc.old_row, rc.new_row, s.db_session_user, s.db_current_user, s.client_addr,
       s.application_name, s.actor_id, s.actor_name, s.correlation_id, s.request_method,
       s.request_path, s.query
FROM whodunit.row_change rc
JOIN whodunit.statement s ON s.id = rc.statement_id;
COMMENT ON VIEW whodunit.change IS
    'One row per changed row, with who changed it, when and how.';

RESET ROLE;

UPDATE whodunit.meta SET value = '2' WHERE key = 'schema_version';
