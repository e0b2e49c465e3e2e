-- key_text_untyped.sql — the key text of a row of a table that no longer exists, from the
-- key values as typed (no types to normalise them with), rendered as whodunit.key_text
-- renders a composite key: a JSON array of the values in key order.
-- Parameters: values (json array).
SELECT json_agg(v ORDER BY o)::text
FROM json_array_elements(%(values)s::json) WITH ORDINALITY AS e(v, o);
