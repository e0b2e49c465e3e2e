-- key_text.sql — the key text of a row of {table} from the key values an engineer typed.
-- The values go through the table's own types (json_populate_record), so `ABC…` finds
-- the uuid stored as `abc…`, and whodunit.key_text renders them as the capture did.
-- Placeholders: {table} (psycopg.sql.Identifier). Parameters: image (json), keys (text[]).
SELECT whodunit.key_text(row_to_json(json_populate_record(NULL::{table}, %(image)s::json)),
                         %(keys)s::text[]);
