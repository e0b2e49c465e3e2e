"""
What a detector raises and a notifier delivers: the `Alert`, and the `AlertSink` between them.

The watcher's detectors and the notifiers are written apart and meet here: detectors
produce alerts without knowing where they go; an `AlertSink` (the durable outbox in
production, a list in tests) takes them and owns their delivery.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = ["Alert", "AlertSink", "Category", "Severity"]


class Severity(enum.StrEnum):
    """How loudly to say it: critical pages everyone, info only shows in the channel."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class Category(enum.StrEnum):
    """What the alert is about; notifiers pick colour, title and mentions from it."""

    DATABASE = "database"
    SECURITY = "security"
    PERFORMANCE = "performance"
    APPLICATION = "application"
    SUCCESS = "success"


@dataclass(frozen=True)
class Alert:
    """
    One alert, with the evidence an on-call engineer needs to act without digging.

    Args:
        key: Identifies the alert for de-duplication and grouping: the same key raised
            again (a retry, a restarted watcher re-reading a batch) is the same alert,
            e.g. ``"mass_delete:stmt:1234"``.
        rule: The detector that fired (``mass_delete``, ``truncate``, ``brute_force``...).
        severity: See `Severity`.
        category: See `Category`.
        title: One line, the answer first: "player7 deleted 1,204 rows from public.User".
        summary: A few sentences: who, what, when, how.
        at: When the underlying event happened (not when it was detected).
        evidence: Facts as short strings: statement ids, actor, DB role, client address,
            counts, SQL snippet, correlation id.
        investigate: The command that opens the full report, e.g.
            ``"whodunit investigate --from 2026-11-28T03:14:00Z --to ... --table User"``.
        statement_ids: The audit rows behind the alert.
    """

    key: str
    rule: str
    severity: Severity
    category: Category
    title: str
    summary: str
    at: datetime
    evidence: Mapping[str, str] = field(default_factory=dict)
    investigate: str | None = None
    statement_ids: Sequence[int] = ()


class AlertSink(Protocol):
    """Takes alerts from the watcher; must not lose one it accepted (a durable outbox)."""

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Accept *alerts* for delivery; return only once they are stored durably."""
