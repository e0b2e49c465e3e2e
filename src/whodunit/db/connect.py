"""
Finding and opening the audited database.

The DSN comes from ``--dsn``, else ``WHODUNIT_DSN``, else the settings file's ``dsn``
(the CLI passes it in), else the embedded cluster started by ``whodunit db start``.
Errors name the DSN with its password masked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import psycopg

from whodunit.errors import DatabaseUnavailableError

__all__ = ["connect", "mask_dsn", "resolve_dsn"]

_PASSWORD_IN_URI = re.compile(r"(://[^:/@]*:)[^@]*@")
_PASSWORD_IN_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """Return *dsn* with any password replaced by ``***``, fit for messages and logs."""
    return _PASSWORD_IN_KV.sub(r"\1***", _PASSWORD_IN_URI.sub(r"\1***@", dsn))


def resolve_dsn(dsn: str | None = None, data_dir: Path | None = None) -> str:
    """
    Return the DSN to use: the one given, ``WHODUNIT_DSN``, or the embedded cluster's.

    Raises:
        DatabaseUnavailableError: nothing given and no embedded cluster is running.
    """
    if dsn:
        return dsn
    if env := os.environ.get("WHODUNIT_DSN"):
        return env
    from whodunit.db.embedded import LocalCluster, default_data_dir

    cluster = LocalCluster(data_dir or default_data_dir())
    if not cluster.running:
        raise DatabaseUnavailableError(
            "no database given and the embedded PostgreSQL is not running: "
            "pass --dsn, set WHODUNIT_DSN, or run 'whodunit db start'"
        )
    return cluster.dsn()


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """
    Open a connection, turning failures into :class:`DatabaseUnavailableError`.

    ``prepare_threshold=None`` keeps it usable behind PgBouncer in transaction mode.
    """
    kwargs.setdefault("prepare_threshold", None)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailableError(
            f"cannot connect to {mask_dsn(dsn)}: {reason}; check the DSN (--dsn or "
            "WHODUNIT_DSN) and that the server is up"
        ) from exc
