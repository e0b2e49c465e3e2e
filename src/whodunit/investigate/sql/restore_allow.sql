-- restore_allow.sql — lift the guards of the tables the restore writes, for its own
-- transaction only (whodunit.guard_allowed reads this setting).
-- Parameters: tables (text: schema.table, comma-separated).
SELECT set_config('whodunit.allow', %(tables)s, true);
