"""
A generic JSON webhook: one POST per notice, for receivers of your own (a ticket system,
a chat bridge, a SOAR tool).

The body is the alert as `whodunit.watch.notifiers.base.alert_to_json` writes it, plus
``count`` and ``last_at`` for a folded group.  ``X-Whodunit-Alert-Key`` (also sent as
``Idempotency-Key``) lets the receiver drop the copy a resend after a crash delivers.

With a secret, ``X-Whodunit-Signature: sha256=<hex>`` is the HMAC-SHA256 of
``<X-Whodunit-Timestamp>.<body>``: the receiver recomputes it to know the alert is ours,
and refuses old timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import orjson

from whodunit.watch.notifiers.base import (
    HttpNotifier,
    Notice,
    alert_to_json,
    retry_after_header,
    utc,
)

__all__ = ["WebhookNotifier", "signature"]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Whodunit-Signature`` value of *body* sent at *timestamp* (Unix seconds)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class WebhookNotifier(HttpNotifier):
    """
    POST each notice as JSON to a URL.

    Args:
        url: The receiver: https, or http to a loopback address.
        secret: Signs each request (see `signature`); never shown.
        timeout: Seconds for one request.
        setting: Where *url* came from, for errors.

    .. versionadded:: 0.1
    """

    channel = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        setting: str = "webhook.url",
    ) -> None:
        super().__init__(url, setting=setting, timeout=timeout)
        self._secret = secret

    def send(self, notices: Sequence[Notice]) -> None:
        for notice in notices:
            body = orjson.dumps(self.render(notice))
            timestamp = str(int(time.time()))
            headers = {
                "X-Whodunit-Alert-Key": notice.alert.key,
                "Idempotency-Key": notice.alert.key,
                "X-Whodunit-Timestamp": timestamp,
            }
            if self._secret:
                headers["X-Whodunit-Signature"] = signature(self._secret, timestamp, body)
            response = self._post(self._url, body, headers)
            if not response.is_success:
                raise self._refused(response, retry_after_header(response))

    @staticmethod
    def render(notice: Notice) -> dict[str, object]:
        """The JSON body for *notice*."""
        last_at = notice.last_at or notice.alert.at
        return {
            **alert_to_json(notice.alert),
            "count": notice.count,
            "last_at": utc(last_at).isoformat(),
        }
