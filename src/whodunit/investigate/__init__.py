"""
Investigating the audit trail: the incident report, focused questions and log sources.

``investigate`` ranks what destroyed data in a time window and answers who, when, what,
how and why for each incident; ``who_deleted``, ``history``, ``timeline`` and ``trace``
answer one question each.  Log lines come from a `LogSource`: JSON-lines files
(`FileLogSource`) or Loki (`LokiLogSource`).

Names are imported on first use, so ``whodunit who-deleted`` does not pay for the report,
the renderers or httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from whodunit.investigate.logs import FileLogSource, LogSource, LokiLogSource
    from whodunit.investigate.model import (
        Change,
        Event,
        How,
        Incident,
        LogLine,
        Report,
        StatementDamage,
        Who,
        Why,
        Window,
    )
    from whodunit.investigate.queries import history, timeline, trace, who_deleted
    from whodunit.investigate.render import to_html, to_json, to_markdown
    from whodunit.investigate.report import investigate

__all__ = [
    "Change",
    "Event",
    "FileLogSource",
    "How",
    "Incident",
    "LogLine",
    "LogSource",
    "LokiLogSource",
    "Report",
    "StatementDamage",
    "Who",
    "Why",
    "Window",
    "history",
    "investigate",
    "timeline",
    "to_html",
    "to_json",
    "to_markdown",
    "trace",
    "who_deleted",
]

_HOMES = {
    "logs": ("FileLogSource", "LogSource", "LokiLogSource"),
    "model": (
        "Change",
        "Event",
        "How",
        "Incident",
        "LogLine",
        "Report",
        "StatementDamage",
        "Who",
        "Why",
        "Window",
    ),
    "queries": ("history", "timeline", "trace", "who_deleted"),
    "render": ("to_html", "to_json", "to_markdown"),
    "report": ("investigate",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
