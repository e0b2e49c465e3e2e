-- restore_lock.sql — hold the tables a restore writes against concurrent changes, so a row
-- judged free of conflicts is still free when it is written; reads go on.
-- Placeholders: {tables} (the tables, comma-separated).
LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE;
