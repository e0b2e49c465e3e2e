"""
What every notifier shares: the notice it sends, the error it raises, retries, URL rules.

A notifier turns `Notice` objects (an alert, possibly folded with its repeats) into one
channel's messages and sends them once: retrying belongs to the caller, the durable outbox
(which schedules the next attempt in the database) or `deliver` (which sleeps, within a
deadline, for the synchronous helpers and the relay).  A failed send raises
`NotifierError`, whose ``retryable`` flag and ``retry_after`` hint drive both.

Webhook URLs carry their credentials (a Discord webhook URL *is* its token), so a URL is
only ever shown through `mask_url`, and httpx's own request log line is masked too.
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx

from whodunit import __version__
from whodunit.errors import ConfigError, WhodunitError
from whodunit.loki import _is_loopback
from whodunit.redact import redact_text
from whodunit.watch.alert import Alert, Category, Severity

__all__ = [
    "HttpNotifier",
    "Notice",
    "Notifier",
    "NotifierError",
    "alert_from_json",
    "alert_to_json",
    "backoff_delay",
    "bounded_wait",
    "check_url",
    "deliver",
    "mask_url",
    "reaches",
    "redact_alert",
    "retry_after_header",
    "utc",
]

#: The longest wait a receiver may ask for; a longer ``retry_after`` is taken as this.
MAX_RETRY_AFTER = 3600.0
_MAX_REPORTED_BODY = 300
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}

_sending: contextvars.ContextVar[bool] = contextvars.ContextVar("whodunit_notify_sending")
_httpx_masked = False


class NotifierError(WhodunitError):
    """
    A notification was not delivered.

    Args:
        message: What happened, with the URL masked.
        retryable: True when the same message may succeed later (timeout, 5xx, 429);
            False when the receiver refused it for good (Discord's 400): never resend it.
        retry_after: Seconds the receiver asked to wait before the next attempt.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        # Every argument in args, so that the error pickles (the daemon may fork).
        super().__init__(message, retryable, retry_after)
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Notice:
    """
    What one message says: an alert, and how often it repeated.

    Args:
        alert: The first alert of its group (its key is the message's de-duplication key:
            a message sent again after a crash carries the same one).
        count: How many alerts of the group the message stands for.
        last_at: When the group's latest alert happened (with *count* > 1).
    """

    alert: Alert
    count: int = 1
    last_at: datetime | None = None

    @property
    def repeats(self) -> str | None:
        """``"x12 in 5 min"`` for a folded group, else None."""
        if self.count < 2:
            return None
        span = ((self.last_at or self.alert.at) - self.alert.at).total_seconds()
        return f"x{self.count} in {_duration(span)}"

    @property
    def title(self) -> str:
        """The alert's title, with the repeat count of a folded group."""
        repeats = self.repeats
        return f"{self.alert.title} ({repeats})" if repeats else self.alert.title


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h".replace(".0 h", " h")


class Notifier(abc.ABC):
    """
    Sends notices to one channel, once; the caller decides about retries.

    Notifiers are thread-safe: the relay and the helpers share one between threads.
    """

    #: The channel's name in settings, the outbox and metrics.
    channel: ClassVar[str]

    @abc.abstractmethod
    def send(self, notices: Sequence[Notice]) -> None:
        """
        Deliver *notices* (in as few messages as the channel's limits allow).

        Raises:
            NotifierError: Not delivered; see its ``retryable`` flag.
        """

    def close(self) -> None:  # noqa: B027 - optional: most notifiers hold nothing open
        """Release connections; the notifier must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HttpNotifier(Notifier):
    """
    A notifier that POSTs JSON over httpx, with the URL checked, masked and kept secret.

    Args:
        url: The receiver's URL: https, or http to a loopback address.
        setting: The setting the URL came from, named in errors.
        timeout: Seconds for one request (connect, each read and write).
    """

    def __init__(self, url: str, *, setting: str, timeout: float = 10.0) -> None:
        self._url = check_url(url, setting)
        self._masked = mask_url(self._url)
        self._timeout = timeout
        _mask_httpx_log()
        self._client = httpx.Client(
            timeout=timeout, headers={"User-Agent": f"whodunit/{__version__}"}
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._masked!r})"

    def close(self) -> None:
        self._client.close()

    def _post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """POST *body*; a network failure or timeout is a retryable `NotifierError`."""
        token = _sending.set(True)
        try:
            return self._client.post(
                url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
            )
        except httpx.TimeoutException as exc:
            raise NotifierError(
                f"{self.channel}: no answer from {self._masked} within {self._timeout:g} s",
                retryable=True,
            ) from exc
        except httpx.TransportError as exc:
            raise NotifierError(
                f"{self.channel}: cannot reach {self._masked}: {self._scrub(str(exc))}",
                retryable=True,
            ) from exc
        finally:
            _sending.reset(token)

    def _refused(self, response: httpx.Response, retry_after: float | None = None) -> NotifierError:
        """
        The error for an answer that is not a success.

        408, 429 and 5xx may succeed later; any other status is the receiver saying no to
        this message, for good.
        """
        status = response.status_code
        retryable = status in (408, 429) or status >= 500
        body = self._scrub(response.text[:_MAX_REPORTED_BODY].strip())
        return NotifierError(
            f"{self.channel}: {self._masked} answered {status} {response.reason_phrase}"
            + (f": {body}" if body else ""),
            retryable=retryable,
            retry_after=retry_after if retryable else None,
        )

    def _scrub(self, text: str) -> str:
        """Mask the URL (and its path, which holds the token) wherever *text* quotes it."""
        path = httpx.URL(self._url).path
        text = text.replace(self._url, self._masked)
        return text.replace(path, "/***") if len(path) > 1 else text


def retry_after_header(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header in seconds (dates are rare from webhooks)."""
    return bounded_wait(response.headers.get("Retry-After"))


def bounded_wait(value: object) -> float | None:
    """A receiver's wait hint as seconds in [0, `MAX_RETRY_AFTER`], or None if unusable."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """
    Seconds before retry number *attempt* + 1: doubling from *base* up to *cap*, jittered.

    The jitter (50-100 %) keeps several senders that failed together from retrying together.
    """
    delay = min(cap, base * 2.0 ** min(attempt, 32))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


def deliver(
    send: Callable[[], None],
    *,
    deadline: float,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """
    Call *send* until it succeeds, waiting as the receiver asks, within *deadline*.

    A retryable `NotifierError` is retried after its ``retry_after`` (a 429's wait) or an
    exponential backoff; a permanent one is raised at once: resending a message Discord
    refused with 400 only risks a ban.  One attempt may run past the deadline by at most
    the notifier's timeout.

    Args:
        send: One attempt.
        deadline: ``time.monotonic()`` value after which no attempt starts.
        backoff: Seconds before the first retry, doubled each time.
        max_backoff: The longest backoff (a receiver's ``retry_after`` may be longer).
        sleep: Waits between attempts.

    Returns:
        The number of attempts made.

    Raises:
        NotifierError: The last failure: permanent, or the deadline came first.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            send()
        except NotifierError as exc:
            if not exc.retryable:
                raise
            wait = exc.retry_after
            if wait is None:
                wait = backoff_delay(attempt - 1, backoff, max_backoff)
            if time.monotonic() + wait > deadline:
                raise
            sleep(wait)
        else:
            return attempt


def check_url(url: str, setting: str) -> str:
    """
    Check an outbound URL: http(s) with a host, and https unless the host is loopback.

    Returns:
        The URL, unchanged.

    Raises:
        ConfigError: Naming *setting* and the masked URL.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"{setting} is not a valid URL: {mask_url(str(url))}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"{setting} must be an https URL with a host, got {mask_url(url)!r}")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise ConfigError(
            f"{setting} must use https, got {mask_url(url)!r}: plain http would carry the "
            "alerts and the URL's token in clear text; http is only allowed to a loopback "
            "address (localhost, 127.0.0.1, ::1)"
        )
    return url


def mask_url(url: str) -> str:
    """
    Return *url* fit for logs and messages: scheme, host and port, and nothing else.

    The path and query of a webhook URL hold its token, user info a password.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    if not parsed.host:
        return "<invalid URL>"
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    hidden = "/***" if parsed.path not in ("", "/") or parsed.query or parsed.userinfo else ""
    return f"{parsed.scheme}://{host}{port}{hidden}"


class _MaskOurRequests(logging.Filter):
    """
    Mask the URL in httpx's "HTTP Request: POST <url>" line for whodunit's own requests.

    httpx logs every request at INFO with the full URL, which for a webhook is its token;
    the app's own requests are left as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _sending.get(False) and isinstance(record.args, tuple):
            record.args = tuple(
                mask_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def _mask_httpx_log() -> None:
    global _httpx_masked
    if not _httpx_masked:
        logging.getLogger("httpx").addFilter(_MaskOurRequests())
        _httpx_masked = True


def alert_to_json(alert: Alert) -> dict[str, Any]:
    """The alert as a JSON object (the outbox payload, the generic webhook's body)."""
    return {
        "key": alert.key,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "category": alert.category.value,
        "title": alert.title,
        "summary": alert.summary,
        "at": utc(alert.at).isoformat(),
        "evidence": dict(alert.evidence),
        "investigate": alert.investigate,
        "statement_ids": list(alert.statement_ids),
    }


def alert_from_json(data: Mapping[str, Any]) -> Alert:
    """The alert `alert_to_json` wrote."""
    return Alert(
        key=data["key"],
        rule=data["rule"],
        severity=Severity(data["severity"]),
        category=Category(data["category"]),
        title=data["title"],
        summary=data["summary"],
        at=datetime.fromisoformat(data["at"]),
        evidence=dict(data.get("evidence") or {}),
        investigate=data.get("investigate"),
        statement_ids=tuple(data.get("statement_ids") or ()),
    )


def redact_alert(alert: Alert) -> Alert:
    """
    The alert with secrets found by shape replaced in its texts and evidence.

    Alerts leave for third parties (Discord, mail servers); a password in a SQL snippet
    or an app's field must not go with them.
    """
    return dataclasses.replace(
        alert,
        title=redact_text(alert.title),
        summary=redact_text(alert.summary),
        evidence={name: redact_text(value) for name, value in alert.evidence.items()},
    )


def reaches(severity: Severity, least: Severity) -> bool:
    """Whether an alert of *severity* goes to a channel that takes *least* and above."""
    return _RANK[severity] >= _RANK[least]


def utc(moment: datetime) -> datetime:
    """*moment* in UTC; a naive datetime is taken as UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
