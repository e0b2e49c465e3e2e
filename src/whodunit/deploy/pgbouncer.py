"""
PgBouncer: let ~1000 application connections share ~25 PostgreSQL server connections.

Renders ``pgbouncer.ini``, ``userlist.txt`` (SCRAM verifiers, no plaintext), the SQL
that gives the application role the same verifier on PostgreSQL, and a systemd
drop-in with the file-descriptor limit the pool sizes need.

Transaction pooling is the point: a server connection is lent to a client for one
transaction, so idle app connections cost nothing.  whodunit's context survives it
because it is written per transaction (``SET LOCAL``); what breaks is anything a
client leaves on a *session* (see ``docs/deploy.md``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from whodunit.deploy.check import Check, CheckFailed
from whodunit.deploy.render import Component, Previous, RenderedFile, header
from whodunit.deploy.scram import Verifier, make_verifier, parse_verifier
from whodunit.deploy.settings import Secret, secret, setting
from whodunit.errors import ConfigError

__all__ = [
    "COMPONENT",
    "PgBouncerSettings",
    "check_ini",
    "check_live",
    "check_userlist",
    "parse_ini",
    "parse_userlist",
    "read_rendered",
]

INI = "pgbouncer.ini"
USERLIST = "userlist.txt"
ROLE_SQL = "server_role.sql"
SYSTEMD = "systemd-limits.conf"

# Safe in pgbouncer.ini values, userlist.txt quoting and SQL identifiers alike.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
# What pgbouncer opens besides clients and servers: listeners, log, DNS, the console.
_FD_OVERHEAD = 100


@dataclass(frozen=True)
class PgBouncerSettings:
    """``[deploy.pgbouncer]``: where it listens, what it pools, and how long it waits."""

    listen_addr: str = setting(
        "127.0.0.1", "Address clients connect to; '*' for every interface (mind the firewall)."
    )
    listen_port: int = setting(6432, "Port clients connect to.", low=1, high=65535)
    unix_socket_dir: str = setting("", "Directory for a Unix socket too; empty: TCP only.")
    database: str = setting("app", "Database name, the same for clients and on PostgreSQL.")
    server_host: str = setting("127.0.0.1", "PostgreSQL host, IP or Unix socket directory.")
    server_port: int = setting(5432, "PostgreSQL port.", low=1, high=65535)
    user: str = setting("app", "The application's role, on PgBouncer and PostgreSQL.")
    password: Secret | None = field(
        default=None, metadata=secret("The application role's password.")
    )
    admin_user: str = setting("pgbouncer_admin", "May run admin commands on the console.")
    admin_password: Secret | None = field(
        default=None, metadata=secret("The admin user's password.")
    )
    stats_user: str = setting("pgbouncer_stats", "May read SHOW STATS/POOLS (exporters).")
    stats_password: Secret | None = field(
        default=None, metadata=secret("The stats user's password.")
    )
    auth_file: str = setting(
        "/etc/pgbouncer/userlist.txt", "Where userlist.txt will be on the PgBouncer host."
    )
    pool_mode: str = setting(
        "transaction",
        "transaction: a server connection per transaction; session: per client connection.",
        choices=("transaction", "session"),
    )
    max_client_conn: int = setting(
        1200, "Client connections accepted in all.", low=1, high=1_000_000
    )
    default_pool_size: int = setting(
        25, "Server connections per database and user.", low=1, high=10_000
    )
    reserve_pool_size: int = setting(
        5, "Extra server connections once a client waited reserve_pool_timeout.", low=0, high=10_000
    )
    reserve_pool_timeout: int = setting(3, "Seconds before the reserve is used.", low=0, high=3600)
    server_idle_timeout: int = setting(
        600, "Seconds an unused server connection is kept open.", low=0, high=86_400
    )
    server_lifetime: int = setting(
        3600, "Seconds before a server connection is replaced.", low=0, high=86_400
    )
    query_wait_timeout: int = setting(
        60, "Seconds a client may wait for a server connection.", low=0, high=3600
    )
    idle_transaction_timeout: int = setting(
        60, "Seconds a client may sit idle inside a transaction.", low=0, high=86_400
    )
    client_idle_timeout: int = setting(
        0, "Seconds an idle client connection is kept; 0: forever.", low=0, high=86_400
    )
    scram_iterations: int = setting(
        4096, "PBKDF2 rounds of the SCRAM verifiers.", low=4096, high=10_000_000
    )

    def validate(self) -> None:
        """Refuse combinations each value alone cannot catch."""
        for key in ("database", "user", "admin_user", "stats_user"):
            if not _NAME.fullmatch(getattr(self, key)):
                raise ConfigError(
                    f"deploy.pgbouncer.{key} must be a plain name (letters, digits, _ . -, "
                    f"at most 63), got {getattr(self, key)!r}"
                )
        users = [self.user, self.admin_user, self.stats_user]
        if len(set(users)) != len(users):
            raise ConfigError(
                "deploy.pgbouncer.user, admin_user and stats_user must differ, got "
                + ", ".join(users)
            )
        if not self.listen_addr or any(c in self.listen_addr for c in " ;#"):
            raise ConfigError(
                f"deploy.pgbouncer.listen_addr must be an address, got {self.listen_addr!r}"
            )
        if self.server_connections > self.max_client_conn:
            raise ConfigError(
                f"deploy.pgbouncer.default_pool_size ({self.default_pool_size}) + "
                f"reserve_pool_size ({self.reserve_pool_size}) must not exceed "
                f"deploy.pgbouncer.max_client_conn ({self.max_client_conn}): the pool "
                "exists to serve more clients than server connections"
            )

    @property
    def server_connections(self) -> int:
        """The most PostgreSQL connections PgBouncer opens: the pool plus its reserve."""
        return self.default_pool_size + self.reserve_pool_size

    @property
    def fd_limit(self) -> int:
        """The open-files limit to give PgBouncer, rounded up to a multiple of 1024."""
        users = 3  # app, admin and stats: pgbouncer reserves descriptors for each
        needed = self.max_client_conn + self.server_connections * users + _FD_OVERHEAD
        return math.ceil(needed / 1024) * 1024


def render(settings: PgBouncerSettings, previous: Previous) -> list[RenderedFile]:
    """Render the PgBouncer files; a verifier whose password did not change is kept."""
    try:
        old = parse_userlist(previous.read(f"pgbouncer/{USERLIST}") or "")
    except CheckFailed:  # edited by hand: nothing in it is worth keeping
        old = {}
    verifiers = {
        user: _verifier(password, old.get(user), settings.scram_iterations)
        for user, password in (
            (settings.user, settings.password),
            (settings.admin_user, settings.admin_password),
            (settings.stats_user, settings.stats_password),
        )
    }
    userlist = header(";;") + "".join(f'"{user}" "{v}"\n' for user, v in verifiers.items())
    role_sql = (
        header("--")
        + "-- Gives the role the verifier PgBouncer holds: with SCRAM, PgBouncer logs in to\n"
        + "-- PostgreSQL with the client's own proof, which only a matching verifier accepts.\n"
        + f"ALTER ROLE \"{settings.user}\" PASSWORD '{verifiers[settings.user]}';\n"
    )
    return [
        RenderedFile(INI, _ini(settings)),
        RenderedFile(USERLIST, userlist, secret=True),
        RenderedFile(ROLE_SQL, role_sql, secret=True),
        RenderedFile(SYSTEMD, _systemd(settings)),
    ]


def _verifier(password: Secret | None, old: str | None, iterations: int) -> Verifier:
    assert password is not None  # render() fills in or refuses missing secrets
    kept = parse_verifier(old) if old else None
    if kept is not None and kept.iterations == iterations and kept.matches(password.value):
        return kept
    return make_verifier(password.value, iterations=iterations)


def _ini(s: PgBouncerSettings) -> str:
    """pgbouncer.ini; comments on lines of their own (pgbouncer has no inline comments)."""
    lines = [
        header(";;").rstrip("\n"),
        f";; {s.max_client_conn} client connections share {s.default_pool_size} PostgreSQL "
        f"connections (+{s.reserve_pool_size} reserve).",
        f";; Give pgbouncer at least {s.fd_limit} open files: systemd, {SYSTEMD} beside",
        f";; this file; Docker, --ulimit nofile={s.fd_limit}:{s.fd_limit}; a shell, "
        f"ulimit -n {s.fd_limit}.",
        "",
        "[databases]",
        f"{s.database} = host={s.server_host} port={s.server_port} dbname={s.database}",
        "",
        "[pgbouncer]",
        ";; Nothing beyond this host unless deploy.pgbouncer.listen_addr says so.",
        f"listen_addr = {s.listen_addr}",
        f"listen_port = {s.listen_port}",
        f"unix_socket_dir = {s.unix_socket_dir}",
        "auth_type = scram-sha-256",
        f"auth_file = {s.auth_file}",
        f"admin_users = {s.admin_user}",
        f"stats_users = {s.stats_user}",
        "",
        ";; A server connection is lent for one transaction: session state (SET, advisory",
        ";; locks, LISTEN, prepared statements) does not carry over; SET LOCAL does.",
        f"pool_mode = {s.pool_mode}",
        f"max_client_conn = {s.max_client_conn}",
        f"default_pool_size = {s.default_pool_size}",
        f"reserve_pool_size = {s.reserve_pool_size}",
        f"reserve_pool_timeout = {s.reserve_pool_timeout}",
        ";; A hard ceiling on PostgreSQL connections, whatever users connect.",
        f"max_db_connections = {s.server_connections}",
        "",
        ";; PostgreSQL sees only PgBouncer's address: append the client's to",
        ";; application_name, so the audit trail still knows where a change came from.",
        "application_name_add_host = 1",
        ";; Drivers such as JDBC send it at login; PgBouncer would refuse the connection.",
        "ignore_startup_parameters = extra_float_digits",
        "",
        f"server_idle_timeout = {s.server_idle_timeout}",
        f"server_lifetime = {s.server_lifetime}",
        ";; A client idle inside a transaction holds a server connection from everyone.",
        f"idle_transaction_timeout = {s.idle_transaction_timeout}",
        f"query_wait_timeout = {s.query_wait_timeout}",
        ";; Application pools keep idle connections on purpose; they cost no server connection.",
        f"client_idle_timeout = {s.client_idle_timeout}",
        "server_connect_timeout = 5",
        "client_login_timeout = 15",
        "",
        ";; Connections and disconnections are evidence: keep them in the log.",
        "log_connections = 1",
        "log_disconnections = 1",
        "log_pooler_errors = 1",
        "stats_period = 60",
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _systemd(s: PgBouncerSettings) -> str:
    return (
        header("#")
        + "# Install as /etc/systemd/system/pgbouncer.service.d/whodunit.conf, then run\n"
        + "# 'systemctl daemon-reload'; systemd's default (1024) is below max_client_conn.\n"
        + f"[Service]\nLimitNOFILE={s.fd_limit}\n"
    )


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """
    Read pgbouncer.ini the way pgbouncer does: ``key = value``, comments on their own line.

    Raises:
        CheckFailed: A line pgbouncer would misread, such as a comment after a value.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
            continue
        key, equals, value = line.partition("=")
        if not equals or current is None:
            raise CheckFailed(f"{INI} line {number} is neither a section nor key = value: {raw}")
        value = value.strip()
        if re.search(r"\s[;#]", value):
            raise CheckFailed(
                f"{INI} line {number}: pgbouncer reads no inline comments, so the value of "
                f"{key.strip()} would be {value!r}"
            )
        current[key.strip()] = value
    return sections


def parse_userlist(text: str) -> dict[str, str]:
    """
    Read userlist.txt: ``"user" "secret"`` lines and ``;`` comments.

    Raises:
        CheckFailed: A line pgbouncer would reject (it then ignores the whole file).
    """
    users = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith(";"):
            continue
        match = re.fullmatch(r'\s*"([^"]+)"\s+"([^"]*)"\s*', raw)
        if match is None:
            raise CheckFailed(f'{USERLIST} line {number} is not \'"user" "secret"\'')
        users[match[1]] = match[2]
    return users


def check_ini(directory: Path) -> str:
    """The static check of pgbouncer.ini: readable by pgbouncer, and what it promises."""
    ini = parse_ini(read_rendered(directory / INI))
    main = ini.get("pgbouncer", {})
    for key in ("listen_addr", "listen_port", "pool_mode", "auth_type", "auth_file"):
        if key not in main:
            raise CheckFailed(f"{INI} sets no {key} in [pgbouncer]")
    if main["auth_type"] != "scram-sha-256":
        raise CheckFailed(f"{INI} auth_type is {main['auth_type']}, not scram-sha-256")
    if not ini.get("databases"):
        raise CheckFailed(f"{INI} has no [databases] entry")
    return (
        f"{main['pool_mode']} pooling: {main.get('max_client_conn', '?')} clients on "
        f"{main.get('max_db_connections', '?')} server connections; listens on "
        f"{main['listen_addr']}:{main['listen_port']}"
    )


def check_userlist(directory: Path) -> str:
    """The static check of the secrets: SCRAM verifiers only, files closed to others."""
    users = parse_userlist(read_rendered(directory / USERLIST))
    for user, stored in users.items():
        if parse_verifier(stored) is None:
            raise CheckFailed(f"{USERLIST}: {user}'s entry is not a SCRAM-SHA-256 verifier")
    main = parse_ini(read_rendered(directory / INI)).get("pgbouncer", {})
    for key in ("admin_users", "stats_users"):
        for user in filter(None, (u.strip() for u in main.get(key, "").split(","))):
            if user not in users:
                raise CheckFailed(f"{key} names {user}, who has no entry in {USERLIST}")
    for name in (USERLIST, ROLE_SQL):
        mode = (directory / name).stat().st_mode & 0o777
        if mode & 0o077:
            raise CheckFailed(f"{name} is readable by others (mode {mode:o}): chmod 600 it")
    return f"{len(users)} SCRAM-SHA-256 verifiers, no plaintext; secret files 0600"


def check_live(directory: Path) -> str:
    """The live check: the real pgbouncer, on these files, in front of a real PostgreSQL."""
    from whodunit.deploy import pgbouncer_live  # builds on this module's parsers

    return pgbouncer_live.check(directory)


def read_rendered(path: Path) -> str:
    """Read a rendered file; a missing or unreadable one fails the check that needs it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckFailed(f"cannot read {path}: {exc.strerror}") from exc


COMPONENT = Component(
    name="pgbouncer",
    summary="PgBouncer in transaction pooling mode in front of the audited database.",
    settings=PgBouncerSettings,
    render=render,
    checks=(
        Check("pgbouncer.ini is readable by pgbouncer", check_ini),
        Check("userlist.txt holds verifiers only", check_userlist),
        Check(
            "pgbouncer serves a transaction on PostgreSQL",
            check_live,
            tool="pgbouncer",
            install="apt-get install pgbouncer",
        ),
    ),
)
