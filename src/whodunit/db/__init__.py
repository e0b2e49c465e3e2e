"""The audited database: installing whodunit into it, connecting, the embedded server."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def sql_text(name: str) -> str:
    """
    Return the statement in ``whodunit/db/sql/<name>``, without its comment lines.

    SQL lives in files beside the code; the leading ``--`` lines explain it to readers and
    would only cost bytes on every round trip.
    """
    text = resources.files("whodunit.db").joinpath("sql", name).read_text()
    return "\n".join(line for line in text.splitlines() if line and not line.startswith("--"))
