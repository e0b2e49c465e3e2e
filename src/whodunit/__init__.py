"""
whodunit: forensic logging and auditing for Flask + PostgreSQL applications.

When the database gets wiped, whodunit says who did it, when, what, how and why,
and puts the lost rows back.  The public modules are ``whodunit.flask``,
``whodunit.context``, ``whodunit.log``, ``whodunit.audit``, ``whodunit.notify`` and
``whodunit.tracing``; sub-packages (``db``, ``watch``, ``investigate``, ...) are internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from whodunit.errors import WhodunitError

try:
    __version__ = version("whodunit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["WhodunitError", "__version__"]
