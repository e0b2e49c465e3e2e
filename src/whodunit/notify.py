"""
Notifications from the application: ``send_critical_alert(...)`` and friends.

Each helper sends one alert, now, to every configured channel (``[discord]``, ``[smtp]``,
``[webhook]``, ``[alertmanager]`` of the settings, or their ``WHODUNIT_*`` variables)
whose ``min_severity`` it reaches, through the same notifiers as ``whodunit watch``: the
same embeds and mentions, Discord's limits, its 429 waits, and retries of 5xx and
timeouts, all within a *deadline* (10 s by default).  Channels are sent to in parallel.

They send directly rather than through the database outbox, so they work in any app,
with or without whodunit's schema: a receiver that stays down past the deadline means
the alert is not delivered, which the result says and the ``whodunit.notify`` logger
reports.  Where an alert must survive an outage, queue it instead with
``whodunit.watch.outbox.OutboxSink(dsn, routes).submit([alert])`` and let
``whodunit watch`` deliver it.  Either way the call blocks: from a request handler,
prefer a background job.

Example::

    from whodunit.notify import send_security_alert

    send_security_alert(
        "Admin role granted to player7",
        "player7 became admin through the support console.",
        granted_by="support:alice-bot",
        ip="203.0.113.9",
    )

Fields become the message's fields; a field whose name looks secret (``password``,
``token``, ...) is redacted, as are secrets found by shape in any text.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from whodunit.errors import ConfigError
from whodunit.redact import redact
from whodunit.watch.alert import Alert, Category, Severity
from whodunit.watch.notifiers.base import (
    Notice,
    Notifier,
    NotifierError,
    deliver,
    reaches,
    redact_alert,
)
from whodunit.watch.notifiers.settings import NotifySettings, build_notifiers, load

__all__ = [
    "SendResult",
    "configure",
    "send_critical_alert",
    "send_database_alert",
    "send_performance_alert",
    "send_security_alert",
    "send_success_notification",
]

#: Seconds a helper may take, retries and Discord's waits included.
DEFAULT_DEADLINE = 10.0
_log = logging.getLogger("whodunit.notify")


@dataclass(frozen=True)
class SendResult:
    """
    What became of one alert.

    Attributes:
        key: The alert's key (given, or generated).
        delivered: Channels that took it.
        failed: Channel to the reason it was not delivered (URLs masked).
    """

    key: str
    delivered: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no channel failed."""
        return not self.failed


class _Channels:
    """The notifiers and their least severities, made once from the settings."""

    def __init__(self, settings: NotifySettings, deadline: float) -> None:
        routes = settings.routes()
        if not routes:
            raise ConfigError(
                "no notification channel is configured: set WHODUNIT_DISCORD_WEBHOOK_URL (or "
                "[discord] webhook_url), [smtp] host, [webhook] url or [alertmanager] url"
            )
        self.routes = routes
        self.notifiers: dict[str, Notifier] = build_notifiers(settings)
        self.deadline = deadline

    def close(self) -> None:
        for notifier in self.notifiers.values():
            notifier.close()


_channels: _Channels | None = None
_channels_lock = threading.Lock()


def configure(
    settings: NotifySettings | None = None,
    *,
    config: str | Path | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> None:
    """
    Set up the helpers now, so a bad setting fails at start-up, not at the first alert.

    Without it, the first helper call loads the settings (``WHODUNIT_CONFIG`` and the
    environment).  Calling it again replaces the channels.

    Args:
        settings: Notification settings; default: loaded from *config* and the environment.
        config: A ``whodunit.toml`` (default: ``WHODUNIT_CONFIG``).
        deadline: Default seconds per helper call.

    Raises:
        ConfigError: A bad setting, or no channel configured.

    .. versionadded:: 0.1
    """
    global _channels
    channels = _Channels(settings or load(config), deadline)
    with _channels_lock:
        previous, _channels = _channels, channels
    if previous is not None:
        previous.close()


def _current() -> _Channels:
    global _channels
    with _channels_lock:
        if _channels is None:
            _channels = _Channels(load(), DEFAULT_DEADLINE)
        return _channels


def _send(
    severity: Severity,
    category: Category,
    rule: str,
    title: str,
    message: str,
    key: str | None,
    deadline: float | None,
    fields: Mapping[str, object],
) -> SendResult:
    channels = _current()
    redacted = redact(dict(fields))
    assert isinstance(redacted, dict)
    alert = redact_alert(
        Alert(
            key=key or f"app:{uuid.uuid4().hex}",
            rule=rule,
            severity=severity,
            category=category,
            title=title,
            summary=message,
            at=datetime.now(UTC),
            evidence={str(name): str(value) for name, value in redacted.items()},
        )
    )
    targets = [name for name, least in channels.routes.items() if reaches(severity, least)]
    until = time.monotonic() + (channels.deadline if deadline is None else deadline)

    def one(name: str) -> str | None:
        notifier = channels.notifiers[name]
        try:
            deliver(lambda: notifier.send([Notice(alert)]), deadline=until)
        except NotifierError as exc:
            _log.warning("notify: alert %s not delivered to %s: %s", alert.key, name, exc)
            return str(exc)
        return None

    if not targets:
        return SendResult(alert.key)
    with ThreadPoolExecutor(len(targets), thread_name_prefix="whodunit-notify") as pool:
        errors = dict(zip(targets, pool.map(one, targets), strict=True))
    return SendResult(
        alert.key,
        delivered=tuple(name for name in targets if errors[name] is None),
        failed={name: error for name, error in errors.items() if error is not None},
    )


def send_critical_alert(
    title: str,
    message: str,
    *,
    key: str | None = None,
    deadline: float | None = None,
    **fields: object,
) -> SendResult:
    """
    Send a critical alert: red, and Discord pings ``@everyone`` (``discord.mention_critical``).

    Args:
        title: One line, the answer first.
        message: A few sentences: what happened, what to do.
        key: Identifies the alert for receivers that de-duplicate (default: a new one).
        deadline: Seconds to try for (default: 10, or `configure`'s).
        fields: Facts shown as fields (``table="users", rows=1204``).

    Returns:
        Which channels took it and why others did not; it never raises for a delivery
        failure.

    Raises:
        ConfigError: The settings are wrong, or no channel is configured.

    .. versionadded:: 0.1
    """
    return _send(
        Severity.CRITICAL,
        Category.APPLICATION,
        "app_critical",
        title,
        message,
        key,
        deadline,
        fields,
    )


def send_security_alert(
    title: str,
    message: str,
    *,
    key: str | None = None,
    deadline: float | None = None,
    **fields: object,
) -> SendResult:
    """
    Send a security alert: Discord pings ``@here`` (``discord.mention_security``).

    Arguments, result and errors as for `send_critical_alert`.

    .. versionadded:: 0.1
    """
    return _send(
        Severity.WARNING, Category.SECURITY, "app_security", title, message, key, deadline, fields
    )


def send_database_alert(
    title: str,
    message: str,
    *,
    key: str | None = None,
    deadline: float | None = None,
    **fields: object,
) -> SendResult:
    """
    Send a database warning (no ping).

    Arguments, result and errors as for `send_critical_alert`.

    .. versionadded:: 0.1
    """
    return _send(
        Severity.WARNING, Category.DATABASE, "app_database", title, message, key, deadline, fields
    )


def send_performance_alert(
    title: str,
    message: str,
    *,
    key: str | None = None,
    deadline: float | None = None,
    **fields: object,
) -> SendResult:
    """
    Send a performance warning (no ping).

    Arguments, result and errors as for `send_critical_alert`.

    .. versionadded:: 0.1
    """
    return _send(
        Severity.WARNING,
        Category.PERFORMANCE,
        "app_performance",
        title,
        message,
        key,
        deadline,
        fields,
    )


def send_success_notification(
    title: str,
    message: str,
    *,
    key: str | None = None,
    deadline: float | None = None,
    **fields: object,
) -> SendResult:
    """
    Send good news, such as a finished restore (info, green, no ping; email only receives it
    when ``smtp.min_severity`` is ``info``).

    Arguments, result and errors as for `send_critical_alert`.

    .. versionadded:: 0.1
    """
    return _send(
        Severity.INFO, Category.SUCCESS, "app_success", title, message, key, deadline, fields
    )
