"""
Run the real pgbouncer on rendered files, in front of a PostgreSQL of our choosing.

PgBouncer 1.18 has no ``--check`` mode, and it starts even with a userlist it calls
"broken" (it logs an ERROR and lets nobody in), so the only proof that it accepts a
config is to start it, log in through it and read its log.  `serve` does that on a
copy of the rendered files that differs only in where it listens and which server it
reaches; the load tests use it too.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from whodunit.db.embedded import SERVICE_USER, LocalCluster
from whodunit.deploy.check import CheckFailed, find_tool
from whodunit.deploy.pgbouncer import INI, SYSTEMD, USERLIST, parse_ini, read_rendered
from whodunit.deploy.scram import make_verifier

__all__ = ["Bouncer", "check", "free_port", "raise_fd_limit", "serve"]

CHECK_USER = "whodunit_check"
_START_SECONDS = 10.0
# Room for the client sockets of whoever drives pgbouncer from this process, on top of
# what pgbouncer itself needs (children inherit the limit).
_FD_HEADROOM = 1024


@dataclass
class Bouncer:
    """A running pgbouncer: where to reach it and what it logged."""

    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        """Everything pgbouncer logged so far."""
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raise_fd_limit(wanted: int) -> int:
    """
    Raise this process's soft open-files limit towards *wanted* (children inherit it).

    Returns:
        The soft limit now in force; it stays below *wanted* when the hard limit does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


@contextmanager
def serve(
    directory: Path,
    server_host: str,
    server_port: int,
    *,
    extra_users: Mapping[str, str] | None = None,
    extra_admins: Sequence[str] = (),
) -> Iterator[Bouncer]:
    """
    Start pgbouncer on the rendered files in *directory*, reaching another server.

    The copy listens on a free port of 127.0.0.1, with no Unix socket, and its
    ``[databases]`` point at *server_host*:*server_port*; everything else is as rendered.

    Args:
        directory: The ``pgbouncer`` directory of a render.
        server_host: The PostgreSQL host (or Unix socket directory) to pool.
        server_port: Its port.
        extra_users: More userlist entries, user to SCRAM verifier (for a check login).
        extra_admins: Users added to ``admin_users``.

    Raises:
        CheckFailed: pgbouncer is missing, does not start, or logs an error at start.
    """
    binary = find_tool("pgbouncer")
    if binary is None:
        raise CheckFailed("pgbouncer is not installed (apt-get install pgbouncer)")
    text = read_rendered(directory / INI)
    main = parse_ini(text).get("pgbouncer", {})
    work = Path(tempfile.mkdtemp(prefix="whodunit-pgbouncer-"))
    try:
        userlist = read_rendered(directory / USERLIST) + "".join(
            f'"{user}" "{verifier}"\n' for user, verifier in (extra_users or {}).items()
        )
        (work / USERLIST).write_text(userlist)
        port = free_port()
        admins = [a for a in main.get("admin_users", "").split(",") if a.strip()]
        overrides = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(port),
            "unix_socket_dir": "",
            "auth_file": str(work / USERLIST),
            "admin_users": ", ".join([*(a.strip() for a in admins), *extra_admins]),
        }
        (work / INI).write_text(_retarget(text, overrides, server_host, server_port))
        _hand_over(work)
        raise_fd_limit(int(main.get("max_client_conn", "100")) + _FD_HEADROOM)
        log = work / "pgbouncer.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(  # noqa: S603 - our binary, our config file
                [str(binary), str(work / INI)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                **_as_service_user(),
            )
        bouncer = Bouncer(port, log, process)
        try:
            _wait_until_up(bouncer)
            yield bouncer
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(directory: Path) -> str:
    """
    Start pgbouncer on the rendered files in front of a throwaway PostgreSQL and use it.

    It logs in as a check user of its own (the rendered passwords are not in the files,
    by design), runs a transaction that sets whodunit's context, and reads the console.
    """
    databases = _databases(parse_ini(read_rendered(directory / INI)))
    password = secrets.token_urlsafe(18)
    verifier = str(make_verifier(password))
    with tempfile.TemporaryDirectory(prefix="whodunit-check-") as tmp:
        cluster = LocalCluster(Path(tmp) / "pg", port=free_port(), tcp=True)
        cluster.start()
        try:
            return _check_on(cluster, directory, databases, password, verifier)
        except psycopg.Error as exc:
            raise CheckFailed(f"the throwaway PostgreSQL failed: {exc}") from exc
        finally:
            cluster.stop()


def _check_on(
    cluster: LocalCluster,
    directory: Path,
    databases: dict[str, str],
    password: str,
    verifier: str,
) -> str:
    """Give the throwaway server the check user and the databases, then probe through it."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(CHECK_USER), sql.Literal(verifier)
            )
        )
        for dbname in sorted(set(databases.values())):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        server_version = admin.info.server_version // 10000
    with serve(
        directory,
        "127.0.0.1",
        cluster.port,
        extra_users={CHECK_USER: verifier},
        extra_admins=[CHECK_USER],
    ) as bouncer:
        return _probe(directory, bouncer, next(iter(databases)), password, server_version)


def _probe(directory: Path, bouncer: Bouncer, database: str, password: str, server: int) -> str:
    login: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": bouncer.port,
        "user": CHECK_USER,
        "password": password,
        "prepare_threshold": None,  # pgbouncer < 1.21 cannot pool prepared statements
    }
    context = '{"actor_id": "whodunit-check"}'
    try:
        with psycopg.connect(dbname=database, **login) as conn:
            with conn.transaction():
                conn.execute("SELECT set_config('whodunit.context', %s, true)", (context,))
                seen, app = _row(
                    conn,
                    "SELECT current_setting('whodunit.context'), "
                    "current_setting('application_name')",
                )
            after = _row(conn, "SELECT current_setting('whodunit.context', true)")[0]
        with psycopg.connect(
            dbname="pgbouncer", autocommit=True, cursor_factory=psycopg.ClientCursor, **login
        ) as console:
            config = {row[0]: row[1] for row in console.execute("SHOW CONFIG").fetchall()}
    except psycopg.Error as exc:
        raise CheckFailed(f"connecting through pgbouncer failed: {exc}\n{_tail(bouncer)}") from exc
    if seen != context or after:
        raise CheckFailed(f"whodunit.context was {seen!r} in its transaction and {after!r} after")
    if " - 127.0.0.1:" not in str(app):
        raise CheckFailed(f"application_name {app!r} lacks the client address")
    rendered = parse_ini(read_rendered(directory / INI))["pgbouncer"]
    if config.get("pool_mode") != rendered.get("pool_mode"):
        raise CheckFailed(f"pgbouncer runs pool_mode {config.get('pool_mode')}")
    version = re.search(r"process up: PgBouncer (\S+),", bouncer.log_text())
    return (
        f"PgBouncer {version[1] if version else '?'} served a transaction on PostgreSQL "
        f"{server} in {config['pool_mode']} mode; whodunit.context stayed in it; "
        + _fd_verdict(directory, bouncer)
    )


def _fd_verdict(directory: Path, bouncer: Bouncer) -> str:
    """Compare pgbouncer's own estimate of open files with the rendered systemd limit."""
    expected = re.search(r"max expected fd use: (\d+)", bouncer.log_text())
    limit = re.search(r"LimitNOFILE=(\d+)", read_rendered(directory / SYSTEMD))
    if expected is None or limit is None:
        return "open-files estimate not found"
    if int(limit[1]) < int(expected[1]):
        raise CheckFailed(
            f"pgbouncer expects {expected[1]} open files, {SYSTEMD} allows {limit[1]}"
        )
    return f"needs {expected[1]} open files, {SYSTEMD} allows {limit[1]}"


def _row(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    row = conn.execute(query).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    return tuple(row)


def _databases(ini: dict[str, dict[str, str]]) -> dict[str, str]:
    """Each ``[databases]`` entry's name and the server database it stands for."""
    result = {}
    for name, params in ini.get("databases", {}).items():
        values = dict(part.split("=", 1) for part in params.split() if "=" in part)
        result[name] = values.get("dbname", name)
    if not result:
        raise CheckFailed(f"{INI} has no [databases] entry")
    return result


def _retarget(text: str, overrides: Mapping[str, str], host: str, port: int) -> str:
    """Rewrite *text* with *overrides* in [pgbouncer] and every database at host:port."""
    lines: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        key = stripped.partition("=")[0].strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            lines.append(line)
            if section == "pgbouncer":
                lines += [f"{k} = {v}" for k, v in overrides.items()]
        elif section == "pgbouncer" and key in overrides:
            continue
        elif section == "databases" and stripped and stripped[0] not in ";#":
            params = [
                p
                for p in stripped.partition("=")[2].split()
                if p.split("=")[0] not in {"host", "port"}
            ]
            lines.append(f"{key} = host={host} port={port} {' '.join(params)}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _service_user() -> pwd.struct_passwd | None:
    """pgbouncer refuses to run as root: then it runs as PostgreSQL's service user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise CheckFailed(
            f"pgbouncer will not run as root and there is no {SERVICE_USER} user to run it "
            "as: run the check as an ordinary user"
        ) from None


def _hand_over(work: Path) -> None:
    owner = _service_user()
    if owner is None:
        return
    for path in [work, *work.iterdir()]:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _as_service_user() -> dict[str, Any]:
    owner = _service_user()
    return {"user": owner.pw_uid, "group": owner.pw_gid} if owner else {}


def _wait_until_up(bouncer: Bouncer) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if bouncer.process.poll() is not None:
            raise CheckFailed(f"pgbouncer exited at start:\n{_tail(bouncer)}")
        try:
            socket.create_connection(("127.0.0.1", bouncer.port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)
            continue
        errors = [
            line
            for line in bouncer.log_text().splitlines()
            if " ERROR " in line or " FATAL " in line
        ]
        if errors:
            raise CheckFailed("pgbouncer logged errors at start:\n" + "\n".join(errors))
        return
    raise CheckFailed(f"pgbouncer did not listen within {_START_SECONDS:.0f} s:\n{_tail(bouncer)}")


def _tail(bouncer: Bouncer) -> str:
    return "\n".join(bouncer.log_text().splitlines()[-10:])
