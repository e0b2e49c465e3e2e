-- trail_access.sql — whether the connected role may read the trail and hash keys.
-- Reading statement / row_change / app_event needs a superuser today (docs/security.md).
SELECT has_table_privilege('whodunit.statement', 'SELECT')
   AND has_table_privilege('whodunit.row_change', 'SELECT')
   AND has_table_privilege('whodunit.app_event', 'SELECT')
   AND has_function_privilege('whodunit.key_text(json, text[])', 'EXECUTE'),
       current_user;
