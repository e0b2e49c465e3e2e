-- restore_foreign_keys.sql — the foreign keys between the tables a restore writes, for
-- putting parents back before their children. A table's references to itself are left
-- out: the rows of one INSERT are checked at the end of it, whatever their order.
-- Parameters: relids (oid[]).
SELECT c.conrelid AS child, c.confrelid AS parent, c.conname::text AS name, c.condeferrable
FROM pg_constraint c
WHERE c.contype = 'f'
  AND c.conrelid = ANY (%(relids)s::oid[])
  AND c.confrelid = ANY (%(relids)s::oid[])
  AND c.conrelid <> c.confrelid;
