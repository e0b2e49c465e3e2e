"""
Validate rendered configs with the real tools, where the machine has them.

A config that was never loaded by the program that reads it is a claim, not a config:
each component declares checks, some pure Python (always run) and some that run the
real tool (``pgbouncer``, ``promtool``, ``amtool``...).  A missing tool is reported as
skipped with the command that installs it, never counted as passed, so a green report
on a bare machine cannot be mistaken for a validated stack (``--strict`` fails on it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson

from whodunit.errors import ConfigError, WhodunitError

if TYPE_CHECKING:
    from whodunit.deploy.render import Component

__all__ = ["Check", "CheckFailed", "CheckResult", "find_tool", "read_manifest", "run_checks"]

#: Written by ``whodunit deploy render`` at the top of its output directory.
MANIFEST = "whodunit-deploy.json"
# Daemons such as pgbouncer live in sbin, which an ordinary user's PATH often lacks.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

Status = Literal["passed", "failed", "skipped"]


class CheckFailed(WhodunitError):
    """A rendered file did not pass a check; the message says what the tool said."""


@dataclass(frozen=True)
class Check:
    """
    One validation of a component's rendered files.

    Args:
        name: What is checked, for the report.
        run: Given the component's directory, checks it; returns a one-line detail
            or raises `CheckFailed`.
        tool: The program it needs; without it the check is skipped.
        install: How to get the tool, shown when it is skipped.
    """

    name: str
    run: Callable[[Path], str]
    tool: str | None = None
    install: str = ""


@dataclass(frozen=True)
class CheckResult:
    """What one check found."""

    component: str
    check: str
    status: Status
    detail: str


def find_tool(name: str) -> Path | None:
    """Return the path of the program *name*, looking in sbin too; None when missing."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    found = shutil.which(name, path=path)
    return Path(found) if found else None


def read_manifest(directory: Path) -> dict[str, object]:
    """
    Read what ``whodunit deploy render`` wrote into *directory*.

    Raises:
        ConfigError: *directory* is not the output of ``whodunit deploy render``.
    """
    try:
        manifest = orjson.loads((directory / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"{directory} holds no readable {MANIFEST}: is it the --out directory of "
            "'whodunit deploy render'?"
        ) from exc
    if not isinstance(manifest, dict):
        raise ConfigError(f"{directory / MANIFEST} is not a JSON object: render again")
    return manifest


def run_checks(directory: Path, components: Sequence[Component]) -> list[CheckResult]:
    """
    Run every check of the components rendered into *directory*.

    Components the manifest does not list were not rendered there, and are left out.

    Raises:
        ConfigError: *directory* is not the output of ``whodunit deploy render``.
    """
    rendered = read_manifest(directory).get("components", [])
    results = []
    for component in components:
        if not isinstance(rendered, list) or component.name not in rendered:
            continue
        for check in component.checks:
            results.append(_run(component.name, check, directory / component.name))
    return results


def _run(component: str, check: Check, directory: Path) -> CheckResult:
    if check.tool and find_tool(check.tool) is None:
        hint = f" ({check.install})" if check.install else ""
        return CheckResult(component, check.name, "skipped", f"{check.tool} not installed{hint}")
    try:
        detail = check.run(directory)
    except WhodunitError as exc:  # CheckFailed, or a tool or server that would not start
        return CheckResult(component, check.name, "failed", str(exc))
    return CheckResult(component, check.name, "passed", detail)
