-- 0006_destructive_index.sql — schema version 6: find a table's destructive statements fast.
-- who-deleted, restore and the report look for one table's DELETE, TRUNCATE and DROP
-- statements in a time window. A partial index holds only those: INSERTs and UPDATEs,
-- nearly all of the writes, never enter it, so capture pays nothing for it.

SET LOCAL ROLE whodunit;

CREATE INDEX IF NOT EXISTS statement_destructive
    ON whodunit.statement (schema_name, table_name, at)
    WHERE op IN ('DELETE', 'TRUNCATE', 'DDL');

RESET ROLE;

UPDATE whodunit.meta SET value = '6' WHERE key = 'schema_version';
