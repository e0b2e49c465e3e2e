"""
Which audited table an engineer means, and the key text of the row they name.

Shared by the questions (``who-deleted``, ``history``) and ``restore``: both turn what a
person typed (``User``, ``public."User"``, a uuid in upper case, ``7,admin``) into what
the capture stored, a table name and ``hashtextextended(key text, 0)``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import sql

from whodunit.errors import ConfigError

__all__ = ["Table", "key_text", "qualified_name", "quote_ident", "read_sql", "resolve_table"]

_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


class Table(NamedTuple):
    """An audited table (or one that was, and left rows in the trail)."""

    schema: str
    table: str
    #: The primary key's columns in key order; empty when the whole row is the key.
    key_columns: tuple[str, ...]

    @property
    def identifier(self) -> sql.Identifier:
        """The table as a quoted ``schema.table`` for composed SQL."""
        return sql.Identifier(self.schema, self.table)

    def __str__(self) -> str:
        return qualified_name(self.schema, self.table)


def qualified_name(schema: str | None, table: str | None) -> str:
    """
    Return ``schema.table`` as people type it: quoted only where case or characters need it.

    The result is also valid input for ``to_regclass`` (``whodunit guard`` takes it).
    """
    return ".".join(quote_ident(part) for part in (schema, table) if part is not None)


def quote_ident(name: str) -> str:
    """Quote *name* for SQL only where PostgreSQL needs it (mixed case, odd characters)."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


@functools.cache
def read_sql(name: str) -> str:
    """Return the text of ``investigate/sql/<name>.sql`` (package data)."""
    return resources.files(__package__).joinpath("sql", f"{name}.sql").read_text()


def resolve_table(conn: psycopg.Connection[Any], name: str) -> Table:
    """
    Find the table *name* means: audited now, or gone but still in the trail.

    Args:
        conn: a connection that may read the trail (a superuser).
        name: ``table`` or ``schema.table``, quoted or not; ``User`` also finds ``"User"``.

    Raises:
        ConfigError: no audited table of that name, and none in the trail.
    """
    for query in ("table_audited", "table_in_trail"):
        try:
            with conn.transaction():
                row = conn.execute(read_sql(query), {"name": name}).fetchone()
        except psycopg.errors.InvalidParameterValue as exc:  # parse_ident refused it
            raise ConfigError(f"{name!r} is not a table name: {_reason(exc)}") from exc
        if row:
            return Table(row[0], row[1], tuple(row[2]))
    raise ConfigError(
        f"no audited table {name!r}, and the trail has no rows of one: "
        "list the audited tables with 'whodunit status' (quote mixed-case names, e.g. '\"User\"')"
    )


def key_text(conn: psycopg.Connection[Any], table: Table, pk: str) -> str:
    """
    Return the text the capture hashed for the row of *table* whose key is *pk*.

    Args:
        pk: the key value; for a composite key a JSON array (``[7, "admin"]``) or the
            values separated by commas (``7,admin``); for a table without a primary key,
            the whole row as ``row_to_json`` renders it.

    Raises:
        ConfigError: *pk* has the wrong number of values or is not valid for the key's types.
    """
    keys = table.key_columns
    if not keys:
        return pk
    values = _key_values(pk, len(keys), table)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (str(table),)).fetchone()
    if not (exists and exists[0]) and len(keys) == 1:
        return pk  # gone with its types: the value as typed is all there is
    try:
        with conn.transaction():
            if exists and exists[0]:
                query = sql.SQL(read_sql("key_text")).format(table=table.identifier)
                image = orjson.dumps(dict(zip(keys, values, strict=True))).decode()
                row = conn.execute(query, {"image": image, "keys": list(keys)}).fetchone()
            else:
                row = conn.execute(
                    read_sql("key_text_untyped"), {"values": orjson.dumps(values).decode()}
                ).fetchone()
    except psycopg.errors.DataError as exc:
        raise ConfigError(
            f"{pk!r} is not a key of {table} ({', '.join(keys)}): {_reason(exc)}"
        ) from exc
    if not row or row[0] is None:
        raise ConfigError(f"{pk!r} is not a key of {table} ({', '.join(keys)})")
    return str(row[0])


def _key_values(pk: str, count: int, table: Table) -> list[Any]:
    """Split what was typed into one value per key column."""
    if count == 1:
        return [pk]
    values: list[Any] | None
    try:
        values = orjson.loads(pk) if pk.lstrip().startswith("[") else None
    except orjson.JSONDecodeError:
        values = None
    if not isinstance(values, list):
        values = [part.strip() for part in pk.split(",")]
    if len(values) != count:
        raise ConfigError(
            f"{table} has a key of {count} columns ({', '.join(table.key_columns)}), "
            f"got {len(values)} value(s) in {pk!r}: give them as a JSON array or comma-separated"
        )
    return values


def _reason(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary or str(exc)).strip()
