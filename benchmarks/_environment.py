"""What every benchmark shares: the database it runs on, and where it ran for its JSON line."""

from __future__ import annotations

import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from whodunit.db.embedded import LocalCluster


def environment() -> dict[str, str]:
    """Return the commit, the Python version and the CPU model, for the JSON summary."""
    return {"commit": _commit(), "python": platform.python_version(), "cpu": _cpu()}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """Yield *dsn*, or without one the DSN of a throwaway embedded cluster, stopped after."""
    if dsn:
        yield dsn
        return
    with tempfile.TemporaryDirectory(prefix="whodunit-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "pg")
        try:
            yield cluster.start()
        finally:
            cluster.stop()
