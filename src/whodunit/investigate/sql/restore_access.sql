-- restore_access.sql — whether whodunit is installed here and the trail is readable.
-- Restore reads row images from whodunit.row_change, which only superusers may read
-- (docs/security.md); NULL in the second column means the schema is missing.
SELECT to_regclass('whodunit.row_change') IS NOT NULL AS installed,
       has_table_privilege(to_regclass('whodunit.row_change'), 'SELECT')
       AND has_function_privilege(to_regprocedure('whodunit.key_text(json, text[])'), 'EXECUTE')
           AS readable;
