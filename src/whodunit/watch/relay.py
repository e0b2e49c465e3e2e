"""
``whodunit relay``: Alertmanager's webhook in, Discord messages with real mentions out.

Alertmanager 0.25 (Debian 12's) has ``discord_configs`` without ``content``, so it can't
ping ``@everyone`` (mentions inside embeds never ping), and it never retries a Discord 429.
Pointing a ``webhook_configs`` receiver at this relay fixes both: each alert becomes an
embed worded like whodunit's own alerts, critical ones ping ``discord.mention_critical``,
security ones ``discord.mention_security``, and 429 answers are waited out.

One request is forwarded at a time (Discord's rate limit is per webhook), within
``relay.deadline`` seconds.  The answer tells Alertmanager what to do next: 200 sent;
503 not yet (Alertmanager retries 5xx; the messages already sent of a group may then
arrive twice); 422 Discord refused the message for good (a 4xx, which Alertmanager does
not retry: resending a refused message only risks a ban); 400 not an Alertmanager v4
payload; 401 a wrong or missing token (with ``relay.token_file``).

It binds 127.0.0.1 unless told otherwise, and another address needs a token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from whodunit.watch.alert import Alert, Category, Severity
from whodunit.watch.notifiers.base import Notice, NotifierError, deliver
from whodunit.watch.notifiers.discord import DiscordNotifier

__all__ = ["WEBHOOK_PATH", "Relay", "notices_from_alertmanager"]

WEBHOOK_PATH = "/alertmanager"
MAX_BODY = 1 << 20  # Alertmanager groups are far smaller; more is not Alertmanager
_SEVERITIES = {"critical": Severity.CRITICAL, "warning": Severity.WARNING, "info": Severity.INFO,
               "none": Severity.INFO}  # fmt: skip
_CATEGORIES = {category.value: category for category in Category}
_NOT_EVIDENCE = frozenset({"alertname", "severity", "category"})
_log = logging.getLogger("whodunit.relay")


def notices_from_alertmanager(payload: Any) -> tuple[list[Notice], int]:
    """
    The notices for an Alertmanager webhook payload (version 4), one per alert.

    ``severity`` and ``category`` labels choose the mention and colour (a ``category``
    among whodunit's, else ``application``); ``summary`` and ``description``
    annotations are the title and text; other labels, ``runbook_url`` and the
    ``generatorURL`` become fields.  A resolved alert is a success notice and pings nobody.

    Returns:
        The notices, and how many alerts Alertmanager left out (``truncatedAlerts``).

    Raises:
        ValueError: Not a version 4 payload.
    """
    if not isinstance(payload, dict) or payload.get("version") != "4":
        raise ValueError("not an Alertmanager webhook payload of version 4")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise ValueError("'alerts' must be a list of objects")
    truncated = payload.get("truncatedAlerts", 0)
    return [_notice(alert) for alert in alerts], truncated if isinstance(truncated, int) else 0


def _notice(alert: Mapping[str, Any]) -> Notice:
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    annotations = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
    name = labels.get("alertname", "alert")
    resolved = alert.get("status") == "resolved"
    starts = _time(alert.get("startsAt"))
    evidence = {k: v for k, v in sorted(labels.items()) if k not in _NOT_EVIDENCE}
    for key, title in (("runbook_url", "Runbook"), ("generatorURL", "Source")):
        link = annotations.get(key) if key in annotations else alert.get(key)
        if link:
            evidence[title] = str(link)
    identity = alert.get("fingerprint") or hashlib.sha256(orjson.dumps(labels)).hexdigest()[:16]
    title = annotations.get("summary") or name
    return Notice(
        Alert(
            key=f"alertmanager:{identity}:{alert.get('startsAt', '')}:{alert.get('status', '')}",
            rule=name,
            severity=Severity.INFO if resolved else _SEVERITIES.get(
                labels.get("severity", "").lower(), Severity.WARNING
            ),
            category=Category.SUCCESS if resolved else _CATEGORIES.get(
                labels.get("category", "").lower(), Category.APPLICATION
            ),
            title=f"Resolved: {title}" if resolved else title,
            summary=annotations.get("description") or annotations.get("message") or "",
            at=_time(alert.get("endsAt")) if resolved else starts,
            evidence=evidence,
        )
    )  # fmt: skip


def _time(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)


class Relay:
    """
    The relay's HTTP server.

    Args:
        discord: Where alerts go.
        host: The address to listen on.
        port: The port (0: any free one, see `port`).
        token: When set, requests must carry ``Authorization: Bearer <token>``.
        deadline: Seconds one request may spend forwarding, waits for Discord included.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        discord: DiscordNotifier,
        *,
        host: str = "127.0.0.1",
        port: int = 9095,
        token: str | None = None,
        deadline: float = 30.0,
    ) -> None:
        self._discord = discord
        self._token = token
        self._deadline = deadline
        self._sending = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("RelayServer", (ThreadingHTTPServer,), {"address_family": family})
        self._server: ThreadingHTTPServer = server_class((host, port), _Handler)
        self._server.relay = self
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Relay(url={self.url!r}, discord={self._discord!r})"

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL to give Alertmanager's ``webhook_configs``."""
        host = str(self._server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{WEBHOOK_PATH}"

    def serve_forever(self) -> None:
        """Serve in this thread until `stop` is called from another."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve from a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="whodunit-relay")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def forward(self, payload: Any) -> int:
        """
        Send the alerts of an Alertmanager payload to Discord; return the messages sent.

        Raises:
            ValueError: Not an Alertmanager v4 payload.
            NotifierError: Not (all) sent: Discord refused, or the deadline passed first.
        """
        deadline = time.monotonic() + self._deadline
        notices, truncated = notices_from_alertmanager(payload)
        note = f"(+{truncated} alerts left out by Alertmanager)" if truncated else ""
        messages = self._discord.render(notices, note=note) if notices else []
        if not self._sending.acquire(timeout=self._deadline):
            raise NotifierError(
                "relay: still busy with earlier alerts after the deadline", retryable=True
            )
        try:
            for message in messages:
                deliver(functools.partial(self._discord.post, message), deadline=deadline)
        finally:
            self._sending.release()
        return len(messages)

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (always, without one)."""
        if self._token is None:
            return True
        expected = f"Bearer {self._token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no {self.path} here"})

    def do_POST(self) -> None:
        relay: Relay = self.server.relay  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
            return
        body = self.rfile.read(length)
        if self.path != WEBHOOK_PATH:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"post to {WEBHOOK_PATH}"})
            return
        if not relay.authorized(self.headers.get("Authorization")):
            self._answer(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        try:
            sent = relay.forward(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except NotifierError as exc:
            _log.warning("relay: alerts not forwarded: %s", exc)
            status = (
                HTTPStatus.SERVICE_UNAVAILABLE
                if exc.retryable
                else (HTTPStatus.UNPROCESSABLE_ENTITY)
            )
            retry = {"Retry-After": str(max(1, round(exc.retry_after or 1)))}
            self._answer(status, {"error": str(exc)}, retry if exc.retryable else {})
        else:
            _log.info("relay: forwarded %d message(s) to Discord", sent)
            self._answer(HTTPStatus.OK, {"messages": sent})

    def _answer(
        self, status: HTTPStatus, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines go to the ``whodunit.relay`` logger at DEBUG, not to stderr."""
        _log.debug("relay: %s %s", self.address_string(), format % args)
