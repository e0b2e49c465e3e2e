-- event_triggers.sql — (re)made by every `whodunit install`, after the migrations, so an
-- install after an uninstall, or after someone dropped or disabled one, restores them.
-- ENABLE ALWAYS: session_replication_role = replica must not switch DDL capture off.
DROP EVENT TRIGGER IF EXISTS whodunit_ddl_start;
DROP EVENT TRIGGER IF EXISTS whodunit_ddl_end;
DROP EVENT TRIGGER IF EXISTS whodunit_sql_drop;

CREATE EVENT TRIGGER whodunit_ddl_start ON ddl_command_start
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA')
    EXECUTE FUNCTION whodunit.on_ddl_start();
CREATE EVENT TRIGGER whodunit_ddl_end ON ddl_command_end
    EXECUTE FUNCTION whodunit.on_ddl_end();
CREATE EVENT TRIGGER whodunit_sql_drop ON sql_drop
    EXECUTE FUNCTION whodunit.on_sql_drop();

ALTER EVENT TRIGGER whodunit_ddl_start ENABLE ALWAYS;
ALTER EVENT TRIGGER whodunit_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER whodunit_sql_drop ENABLE ALWAYS;
