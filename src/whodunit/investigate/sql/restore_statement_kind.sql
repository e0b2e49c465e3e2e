-- restore_statement_kind.sql — what a statement id names, to explain why a restore of it
-- found nothing to put back (an unknown id, an INSERT, a DDL command that removed no rows).
-- Parameters: statement_id (bigint).
SELECT op, command_tag, schema_name, table_name
FROM whodunit.statement
WHERE id = %(statement_id)s;
