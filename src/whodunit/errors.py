"""
Errors raised by whodunit.

One base class, and a subclass only where a caller handles the case differently.
Every message says what happened, the value involved and the next step.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseUnavailableError",
    "PrivilegeError",
    "SchemaNotInstalledError",
    "SchemaVersionError",
    "WhodunitError",
]


class WhodunitError(Exception):
    """
    Base of every error whodunit raises on purpose.

    The CLI prints its message without a traceback and exits 1
    (2 for the subclasses that mean "fix the command or the environment").
    """

    exit_code = 1


class ConfigError(WhodunitError, ValueError):
    """A setting, flag or argument has a value whodunit cannot use."""

    exit_code = 2


class DatabaseUnavailableError(WhodunitError):
    """The database cannot be reached with the DSN given (or none was found)."""

    exit_code = 2


class PrivilegeError(WhodunitError):
    """The connected role lacks a privilege the operation needs."""

    exit_code = 2


class SchemaNotInstalledError(WhodunitError):
    """The ``whodunit`` schema is missing from the database."""


class SchemaVersionError(WhodunitError):
    """The installed schema is newer than this whodunit understands."""


class AuditWriteError(WhodunitError):
    """
    An audit event could not be written to the database.

    Raised when a successful action (or an auth event) cannot be recorded: an action
    that leaves no audit record is worse than one reported as failed.  In the caller's
    transaction it means that transaction cannot commit; in a transaction of its own
    the action has happened and only the log line records it.

    .. versionadded:: 0.1
    """
