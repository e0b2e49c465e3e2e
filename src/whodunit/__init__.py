"""
whodunit: forensic logging and auditing for Flask + PostgreSQL applications.

When the database gets wiped, whodunit says who did it, when, what, how and why,
and puts the lost rows back.  The public modules are ``whodunit.flask``,
``whodunit.context``, ``whodunit.log``, ``whodunit.audit``, ``whodunit.notify`` and
``whodunit.tracing``; sub-packages (``db``, ``watch``, ``investigate``, ...) are internal.
"""

from __future__ import annotations

from whodunit.errors import WhodunitError

__all__ = ["WhodunitError", "__version__"]


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs ~60 ms, paid by every CLI call.
    if name != "__version__":
        raise AttributeError(f"module 'whodunit' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("whodunit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
