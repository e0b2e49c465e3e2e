"""What every benchmark's JSON line reports about where it ran."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


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
