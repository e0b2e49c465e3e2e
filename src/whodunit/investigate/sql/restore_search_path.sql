-- restore_search_path.sql — set search_path for the rest of the transaction and return
-- the value it replaces: a captured CREATE TABLE may name its table and the tables it
-- references without a schema, as its author's search_path resolved them.
-- Parameters: path (text).
SELECT p.previous, set_config('search_path', %(path)s, true)
FROM (SELECT current_setting('search_path') AS previous OFFSET 0) AS p;
