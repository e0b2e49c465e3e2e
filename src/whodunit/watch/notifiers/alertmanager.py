"""
Alertmanager's API (``POST /api/v2/alerts``): whodunit's alerts join the routing, silences
and inhibitions a team already has.

Each notice becomes one Alertmanager alert.  Its labels identify it (``alertname`` is the
rule in CamelCase with a ``Whodunit`` prefix, plus ``severity``, ``category``, ``rule``,
``alert_key``, and the ``table`` and ``actor`` from the evidence when present) and its
annotations describe it (``summary``, ``description``, ``investigate``, ``evidence``).
No ``endsAt`` is sent: these are events, not conditions, so Alertmanager resolves them
after its ``resolve_timeout``.  Posting the same alert again only refreshes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

import orjson

from whodunit.watch.notifiers.base import HttpNotifier, Notice, check_url, utc

__all__ = ["ALERTS_PATH", "AlertmanagerNotifier"]

ALERTS_PATH = "/api/v2/alerts"
_EVIDENCE_LABELS = ("table", "actor")
_NOT_A_WORD = re.compile(r"[^0-9A-Za-z]+")


class AlertmanagerNotifier(HttpNotifier):
    """
    Post notices to Alertmanager as alerts.

    Args:
        url: Alertmanager's base URL (``https://alertmanager.internal:9093``); the API path
            is added unless the URL already ends with it.
        generator_url: A link each alert carries back to its source (the forensic console,
            say); the alert key is added as ``?key=...``.
        timeout: Seconds for one request.
        setting: Where *url* came from, for errors.

    .. versionadded:: 0.1
    """

    channel = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        generator_url: str | None = None,
        timeout: float = 10.0,
        setting: str = "alertmanager.url",
    ) -> None:
        base = url.rstrip("/")
        super().__init__(
            base if base.endswith(ALERTS_PATH) else base + ALERTS_PATH,
            setting=setting,
            timeout=timeout,
        )
        self._generator_url = (
            check_url(generator_url, "alertmanager.generator_url") if generator_url else None
        )

    def send(self, notices: Sequence[Notice]) -> None:
        if not notices:
            return
        response = self._post(self._url, orjson.dumps(self.render(notices)))
        if not response.is_success:
            raise self._refused(response)

    def render(self, notices: Sequence[Notice]) -> list[dict[str, object]]:
        """The API's JSON body: a list of alerts."""
        return [self._alert(notice) for notice in notices]

    def _alert(self, notice: Notice) -> dict[str, object]:
        alert = notice.alert
        labels = {
            "alertname": "Whodunit"
            + "".join(part.capitalize() for part in _NOT_A_WORD.split(alert.rule) if part),
            "severity": alert.severity.value,
            "category": alert.category.value,
            "rule": alert.rule,
            "alert_key": alert.key,
            "source": "whodunit",
        }
        labels |= {
            name: alert.evidence[name] for name in _EVIDENCE_LABELS if alert.evidence.get(name)
        }
        annotations = {"summary": notice.title, "description": alert.summary}
        if alert.investigate:
            annotations["investigate"] = alert.investigate
        if alert.evidence:
            annotations["evidence"] = "\n".join(f"{k}: {v}" for k, v in alert.evidence.items())
        if alert.statement_ids:
            annotations["statement_ids"] = ", ".join(map(str, alert.statement_ids))
        body: dict[str, object] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": utc(alert.at).isoformat(),
        }
        if self._generator_url:
            separator = "&" if "?" in self._generator_url else "?"
            body["generatorURL"] = f"{self._generator_url}{separator}key={quote(alert.key)}"
        return body
