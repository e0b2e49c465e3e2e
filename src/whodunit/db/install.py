"""
Install, upgrade, inspect and remove whodunit's schema in an audited database.

The schema is a chain of numbered migrations (``sql/migrations/NNNN_name.sql``), each
taking the previous version to the next; ``whodunit.meta.schema_version`` records how far
a database got, so ``install`` applies only the missing ones, in one transaction.  The
event triggers are re-made by every install (``sql/event_triggers.sql``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from whodunit.config import MAX_LIMIT, CaptureSettings, Guard
from whodunit.errors import ConfigError, PrivilegeError, SchemaNotInstalledError, SchemaVersionError

__all__ = [
    "GUARD_FIELDS",
    "SETTINGS",
    "InstallResult",
    "Migration",
    "Status",
    "TableStatus",
    "apply_settings",
    "configure",
    "install",
    "installed_version",
    "latest_version",
    "migrations",
    "set_guard",
    "status",
    "uninstall",
]

#: The capture limits stored in ``whodunit.setting`` (defaults in CaptureSettings).
SETTINGS = tuple(CaptureSettings.__dataclass_fields__)
GUARD_FIELDS = tuple(Guard.__dataclass_fields__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Migration:
    """One numbered schema migration."""

    version: int
    name: str

    def read(self) -> str:
        """Return the migration's SQL text."""
        path = _sql_dir().joinpath("migrations", f"{self.version:04d}_{self.name}.sql")
        return str(path.read_text())


def migrations() -> list[Migration]:
    """Return every migration shipped with this whodunit, oldest first."""
    found = []
    for entry in _sql_dir().joinpath("migrations").iterdir():
        if match := re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name):
            found.append(Migration(int(match[1]), match[2]))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    """Return the schema version this whodunit installs."""
    return migrations()[-1].version


def installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """Return the schema version installed in the database, or None when absent."""
    row = conn.execute("SELECT to_regclass('whodunit.meta') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT value FROM whodunit.meta WHERE key = 'schema_version'").fetchone()
    return int(found[0]) if found else None


@dataclass
class InstallResult:
    """What :func:`install` did."""

    from_version: int | None
    to_version: int
    tables_enabled: list[str] = field(default_factory=list)


def install(
    conn: psycopg.Connection[Any],
    schemas: Sequence[str] = ("public",),
    exclude: Sequence[str] = (),
    *,
    target_version: int | None = None,
    progress: Progress | None = None,
) -> InstallResult:
    """
    Install or upgrade the schema and audit every table of *schemas*.

    Idempotent: tables already audited get their triggers re-made, missing migrations are
    applied, nothing is applied twice.  Everything happens in one transaction.

    Args:
        conn: a connection as a superuser (event triggers need one).
        schemas: schemas whose tables (now and later) are audited.
        exclude: tables left out, as ``table`` or ``schema.table``.
        target_version: stop at this schema version (used to test upgrades).
        progress: called as ``progress(table, done, total)`` while tables are enabled.

    Raises:
        PrivilegeError: the connected role is not a superuser.
        ConfigError: a schema or an excluded table does not exist.
        SchemaVersionError: the database holds a newer schema than this whodunit.
    """
    _require_superuser(conn)
    target = target_version or latest_version()
    with conn.transaction():
        current = installed_version(conn)
        if current is not None and current > latest_version():
            raise SchemaVersionError(
                f"the database has whodunit schema v{current}, this whodunit knows up to "
                f"v{latest_version()}: upgrade the whodunit package"
            )
        _check_targets(conn, schemas, exclude)
        # Upgrades may drop whodunit's own objects, which the event triggers refuse otherwise.
        conn.execute("SELECT set_config('whodunit.maintenance', 'on', true)")
        for migration in migrations():
            if (current or 0) < migration.version <= target:
                conn.execute(migration.read())
        conn.execute(_sql_dir().joinpath("event_triggers.sql").read_text())
        result = InstallResult(current, max(current or 0, target))
        result.tables_enabled = _enable_schemas(conn, schemas, exclude, progress)
    return result


def _check_targets(
    conn: psycopg.Connection[Any], schemas: Sequence[str], exclude: Sequence[str]
) -> None:
    known = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    for schema in schemas:
        if schema not in known:
            raise ConfigError(f"schema {schema!r} does not exist: check --schema")
    for name in exclude:
        schema, _, table = name.rpartition(".")
        found = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')",
            (table, [schema] if schema else list(schemas)),
        ).fetchone()
        if not found:
            raise ConfigError(
                f"--exclude {name!r}: no such table in schema(s) {', '.join(schemas)}; "
                "list them with 'whodunit status'"
            )


def _enable_schemas(
    conn: psycopg.Connection[Any],
    schemas: Sequence[str],
    exclude: Sequence[str],
    progress: Progress | None,
) -> list[str]:
    tables = []
    for schema in schemas:
        skipped = [n.rpartition(".")[2] for n in exclude if n.rpartition(".")[0] in ("", schema)]
        conn.execute(
            "INSERT INTO whodunit.audited_schema (schema_name, exclude) VALUES (%s, %s) "
            "ON CONFLICT (schema_name) DO UPDATE SET exclude = EXCLUDED.exclude",
            (schema, skipped),
        )
        rows = conn.execute(
            "SELECT c.oid::regclass::text, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') "
            "ORDER BY c.relname",
            (schema,),
        ).fetchall()
        tables += [regclass for regclass, name in rows if name not in skipped]
        # A table excluded now but audited before stops being audited.
        conn.execute(
            "SELECT whodunit.disable_audit(relid::regclass) FROM whodunit.audited_table "
            "WHERE schema_name = %s AND table_name = ANY(%s)",
            (schema, skipped),
        )
    for done, regclass in enumerate(tables, 1):
        conn.execute("SELECT whodunit.enable_audit(%s::regclass)", (regclass,))
        if progress:
            progress(regclass, done, len(tables))
    return tables


def uninstall(conn: psycopg.Connection[Any], *, drop_trail: bool = False) -> list[str]:
    """
    Remove the triggers (and with *drop_trail* the whole schema) from the database.

    Without *drop_trail* the trail tables stay, read-only history, and the capture stops.
    Returns the tables whose auditing was switched off.
    """
    _require_superuser(conn)
    with conn.transaction():
        if installed_version(conn) is None:
            raise SchemaNotInstalledError("whodunit is not installed in this database")
        conn.execute("SELECT set_config('whodunit.maintenance', 'on', true)")
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relid::regclass::text FROM whodunit.audited_table ORDER BY 1"
            ).fetchall()
        ]
        for event_trigger in ("whodunit_ddl_start", "whodunit_ddl_end", "whodunit_sql_drop"):
            conn.execute(
                sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(event_trigger))
            )
        for regclass in tables:
            conn.execute("SELECT whodunit.disable_audit(%s::regclass)", (regclass,))
        if drop_trail:
            conn.execute("DROP SCHEMA whodunit CASCADE")
        else:
            conn.execute("DELETE FROM whodunit.audited_schema")
        for (schema,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE has_schema_privilege('whodunit', oid, 'USAGE') "
            "AND nspname NOT IN ('whodunit', 'pg_catalog', 'information_schema', 'public') "
            "AND nspname NOT LIKE 'pg\\_%%'"
        ).fetchall():
            conn.execute(
                sql.SQL("REVOKE USAGE ON SCHEMA {} FROM whodunit").format(sql.Identifier(schema))
            )
    return tables


def configure(conn: psycopg.Connection[Any], key: str, value: int) -> None:
    """Change a setting of :data:`SETTINGS` in the database (applies at once)."""
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting {key!r}: known settings are {', '.join(SETTINGS)}")
    if not 0 <= value <= MAX_LIMIT:
        raise ConfigError(f"setting {key} must be from 0 to {MAX_LIMIT}, got {value}")
    _require_superuser(conn, "whodunit configure")
    _require_installed(conn)
    with conn.transaction():
        conn.execute("SELECT whodunit.configure(%s, %s)", (key, str(value)))


def apply_settings(
    conn: psycopg.Connection[Any], capture: Mapping[str, int], guards: Mapping[str, Guard]
) -> list[str]:
    """
    Bring the database's capture limits and guards in line with the settings.

    Only limits the settings name, and only where they differ, are changed (a changed
    limit regenerates every capture function); 'whodunit configure' values stay otherwise.
    Returns one line per change, for the user.
    """
    current = dict(conn.execute("SELECT key, value FROM whodunit.setting").fetchall())
    changes = []
    for key, value in capture.items():
        if current.get(key) != str(value):
            configure(conn, key, value)
            changes.append(f"{key} = {value}")
    for table, guard in guards.items():
        name = set_guard(conn, table, **asdict(guard))
        changes.append(f"guard on {name}: {asdict(guard)}")
    return changes


def set_guard(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    max_rows: int | None = None,
    no_truncate: bool = False,
    no_drop: bool = False,
) -> str:
    """
    Set (or with no limits at all, remove) the prevention guard of *table*.

    Returns the table's qualified name.
    """
    if max_rows is not None and not 0 <= max_rows <= MAX_LIMIT:
        raise ConfigError(f"--max-rows must be from 0 to {MAX_LIMIT}, got {max_rows}")
    _require_superuser(conn, "whodunit guard")
    _require_installed(conn)
    regclass = _regclass(conn, table)
    audited = conn.execute(
        "SELECT EXISTS (SELECT FROM whodunit.audited_table WHERE relid = %s::regclass)", (regclass,)
    ).fetchone()
    if (max_rows is not None or no_truncate) and not (audited and audited[0]):
        raise ConfigError(
            f"{regclass} is not audited, so --max-rows and --no-truncate cannot apply: "
            "run 'whodunit install' for its schema first"
        )
    with conn.transaction():
        conn.execute(
            "SELECT whodunit.set_guard(%s::regclass, %s, %s, %s)",
            (regclass, max_rows, no_truncate, no_drop),
        )
    return regclass


@dataclass
class TableStatus:
    """One table as ``whodunit status`` reports it."""

    name: str
    audited: bool
    key_columns: list[str] | None = None
    guard: dict[str, Any] | None = None


@dataclass
class Status:
    """The state of whodunit in a database."""

    installed_version: int | None
    latest_version: int
    server_version: str
    tables: list[TableStatus] = field(default_factory=list)
    schemas: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    trail_bytes: int = 0
    trail_rows: dict[str, int] = field(default_factory=dict)
    event_triggers: dict[str, str] = field(default_factory=dict)

    @property
    def current(self) -> bool:
        """Whether the installed schema is the one this whodunit installs."""
        return self.installed_version == self.latest_version

    @property
    def healthy(self) -> bool:
        """Current, and all three event triggers present and ENABLE ALWAYS (DDL is captured)."""
        triggers = self.event_triggers
        return self.current and len(triggers) == 3 and set(triggers.values()) == {"A"}


def status(conn: psycopg.Connection[Any]) -> Status:
    """Describe the schema version, the audited and un-audited tables, guards and trail size."""
    version = installed_version(conn)
    server = conn.execute("SHOW server_version").fetchone()
    result = Status(version, latest_version(), str(server[0]) if server else "?")
    if version is None:
        return result
    cur = conn.cursor(row_factory=dict_row)
    result.schemas = {
        r["schema_name"]: list(r["exclude"])
        for r in cur.execute("SELECT schema_name, exclude FROM whodunit.audited_schema ORDER BY 1")
    }
    result.settings = dict(
        conn.execute("SELECT key, value FROM whodunit.setting ORDER BY key").fetchall()
    )
    guards = {
        (r["schema_name"], r["table_name"]): {k: r[k] for k in GUARD_FIELDS}
        for r in cur.execute("SELECT * FROM whodunit.guard")
    }
    for row in cur.execute(
        "SELECT n.nspname, c.relname, c.oid::regclass::text AS name, a.key_columns, "
        "a.relid IS NOT NULL AS audited FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN whodunit.audited_table a ON a.relid = c.oid "
        "WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('whodunit', 'pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY n.nspname, c.relname"
    ):
        result.tables.append(
            TableStatus(
                row["name"],
                row["audited"],
                row["key_columns"],
                guards.get((row["nspname"], row["relname"])),
            )
        )
    for table in ("statement", "row_change", "app_event"):
        size = conn.execute(
            sql.SQL(
                "SELECT pg_total_relation_size({name}::regclass), "
                "(SELECT reltuples::bigint FROM pg_class WHERE oid = {name}::regclass)"
            ).format(name=sql.Literal(f"whodunit.{table}"))
        ).fetchone()
        assert size is not None
        result.trail_bytes += int(size[0])
        result.trail_rows[table] = max(int(size[1]), 0)
    result.event_triggers = dict(
        conn.execute(
            "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'whodunit%' "
            "ORDER BY 1"
        ).fetchall()
    )
    return result


def _require_superuser(conn: psycopg.Connection[Any], what: str = "whodunit install") -> None:
    row = conn.execute(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not row or not row[1]:
        user = row[0] if row else "?"
        raise PrivilegeError(
            f"{what} needs a superuser (it changes triggers and event triggers), "
            f"connected as {user!r}: connect as a superuser, e.g. postgres"
        )


def _require_installed(conn: psycopg.Connection[Any]) -> int:
    version = installed_version(conn)
    if version is None:
        raise SchemaNotInstalledError(
            "whodunit is not installed in this database: run 'whodunit install'"
        )
    return version


def _regclass(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute("SELECT to_regclass(%s)::text", (table,)).fetchone()
    if not row or row[0] is None:
        raise ConfigError(
            f"no table {table!r} in this database (quote mixed-case names, e.g. '\"User\"')"
        )
    return str(row[0])


def _sql_dir() -> Any:
    return resources.files("whodunit.db").joinpath("sql")
