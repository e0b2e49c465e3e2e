"""
Discord webhooks: one embed per notice, coloured and worded by severity and category.

Discord answers 400 to a message over any of its limits, and repeated invalid requests
get the sender's IP banned for a while, so every text is cut to fit before sending
(`LIMITS`) and a 400 is never retried.  Lengths are counted in UTF-16 code units, which
is never fewer than Discord's count, however it counts.

Mentions ping only when `allowed_mentions` says so, and it is always sent explicitly:
critical alerts ping ``mention_critical`` (``@everyone`` by default), security alerts
``mention_security`` (``@here``), everything else nobody, whatever the alert's text holds.

Rate limits: a 429's ``retry_after`` (JSON, seconds) is passed on to the caller; after a
success whose ``X-RateLimit-Remaining`` is 0 the notifier refuses to send (raising a
retryable error with the wait) until ``X-RateLimit-Reset-After`` has passed, so the next
request is not a certain 429.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson

from whodunit.errors import ConfigError
from whodunit.watch.alert import Category, Severity
from whodunit.watch.notifiers.base import (
    HttpNotifier,
    Notice,
    NotifierError,
    bounded_wait,
    retry_after_header,
    utc,
)

__all__ = ["LIMITS", "DiscordNotifier", "check_mention", "check_username"]

#: Discord's documented limits on a webhook message.
LIMITS = {
    "content": 2000,
    "embeds": 10,
    "title": 256,
    "description": 4096,
    "fields": 25,
    "field_name": 256,
    "field_value": 1024,
    "footer": 2048,
    "author": 256,
    "total": 6000,
    "username": 80,
}

COLOURS = {
    Category.DATABASE: 0x3498DB,
    Category.SECURITY: 0xE67E22,
    Category.PERFORMANCE: 0xF1C40F,
    Category.APPLICATION: 0x9B59B6,
    Category.SUCCESS: 0x2ECC71,
}
CRITICAL_COLOUR = 0xE74C3C
ICONS = {
    Category.DATABASE: "\N{CARD FILE BOX}\N{VARIATION SELECTOR-16}",
    Category.SECURITY: "\N{LOCK}",
    Category.PERFORMANCE: "\N{SNAIL}",
    Category.APPLICATION: "\N{WARNING SIGN}\N{VARIATION SELECTOR-16}",
    Category.SUCCESS: "\N{WHITE HEAVY CHECK MARK}",
}
CRITICAL_ICON = "\N{POLICE CARS REVOLVING LIGHT}"

_MENTION = re.compile(r"@everyone|@here|<@&(?P<role>\d+)>|<@!?(?P<user>\d+)>")
_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"
_EMPTY = "\N{EM DASH}"  # Discord refuses an empty field name or value
_SHORT_FIELD = 40  # values this short sit side by side (inline)
_FIELD_FLOOR = 200  # field values are cut to this before fields are dropped
_DESCRIPTION_FLOOR = 1500  # and the description to this


def check_mention(value: str, setting: str) -> str:
    """
    Check a mention setting: ``@everyone``, ``@here``, ``<@&ROLE_ID>``, ``<@USER_ID>`` or "".

    Raises:
        ConfigError: Anything else, which could never ping.
    """
    if value and not _MENTION.fullmatch(value):
        raise ConfigError(
            f"{setting} must be @everyone, @here, <@&ROLE_ID>, <@USER_ID> or empty, got {value!r}"
        )
    return value


def check_username(value: str, setting: str) -> str:
    """Check the name messages are posted under; Discord refuses some with a 400."""
    lowered = value.lower()
    if not 1 <= len(value) <= LIMITS["username"] or "discord" in lowered or "clyde" in lowered:
        raise ConfigError(
            f"{setting} must be 1 to {LIMITS['username']} characters without 'discord' or "
            f"'clyde' (Discord refuses those), got {value!r}"
        )
    return value


class DiscordNotifier(HttpNotifier):
    """
    Post notices to a Discord webhook as embeds.

    Args:
        webhook_url: ``https://discord.com/api/webhooks/ID/TOKEN``; a secret, never shown.
        username: The name messages appear under.
        avatar_url: The picture they appear with.
        mention_critical: Who critical alerts ping (see `check_mention`); "" for nobody.
        mention_security: Who security alerts ping.
        timeout: Seconds for one request.
        setting: Where *webhook_url* came from, for errors.

    .. versionadded:: 0.1
    """

    channel = "discord"

    def __init__(
        self,
        webhook_url: str,
        *,
        username: str = "whodunit",
        avatar_url: str | None = None,
        mention_critical: str = "@everyone",
        mention_security: str = "@here",
        timeout: float = 10.0,
        setting: str = "discord.webhook_url",
    ) -> None:
        super().__init__(webhook_url, setting=setting, timeout=timeout)
        self._username = check_username(username, "discord.username")
        self._avatar_url = avatar_url
        self._mention_critical = check_mention(mention_critical, "discord.mention_critical")
        self._mention_security = check_mention(mention_security, "discord.mention_security")
        # wait=true: Discord answers only once the message is stored, and reports failures
        # it would otherwise swallow.
        self._post_url = str(httpx.URL(self._url).copy_merge_params({"wait": "true"}))
        self._lock = threading.Lock()
        self._blocked_until = 0.0

    def send(self, notices: Sequence[Notice]) -> None:
        for payload in self.render(notices):
            self.post(payload)

    def render(self, notices: Sequence[Notice], note: str = "") -> list[dict[str, Any]]:
        """
        The webhook payloads carrying *notices*: up to 10 embeds and 6000 characters each.

        Args:
            notices: In the order they should appear.
            note: A line added to every message's content (the relay's "3 alerts truncated").
        """
        payloads = []
        for group in _pack(self._embed(notice) for notice in notices):
            embeds = [embed for embed, _ in group]
            mention = self._loudest(notice for _, notice in group)
            content = " ".join(part for part in (mention, note) if part)
            payload: dict[str, Any] = {
                "username": self._username,
                "embeds": embeds,
                "allowed_mentions": _allowed(mention),
            }
            if content:
                payload["content"] = _cut(content, LIMITS["content"])
            if self._avatar_url:
                payload["avatar_url"] = self._avatar_url
            payloads.append(payload)
        return payloads

    def post(self, payload: dict[str, Any]) -> None:
        """
        Send one rendered payload.

        Raises:
            NotifierError: Retryable for a 429 (with Discord's ``retry_after``), a 5xx, a
                timeout, or while the rate limit is exhausted; permanent otherwise.
        """
        with self._lock:
            wait = self._blocked_until - time.monotonic()
        if wait > 0:
            raise NotifierError(
                f"discord: rate limit reached, next request allowed in {wait:.2f} s",
                retryable=True,
                retry_after=wait,
            )
        response = self._post(self._post_url, orjson.dumps(payload))
        reset_after = bounded_wait(response.headers.get("X-RateLimit-Reset-After"))
        retry_after = None
        if response.status_code == 429:
            retry_after = _body_retry_after(response.content)
            if retry_after is None:
                retry_after = (
                    reset_after if reset_after is not None else retry_after_header(response)
                )
            self._block(retry_after or 1.0)
        elif response.headers.get("X-RateLimit-Remaining") == "0" and reset_after:
            self._block(reset_after)
        if not response.is_success:
            raise self._refused(response, retry_after)

    def _block(self, seconds: float) -> None:
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    def _loudest(self, notices: Iterable[Notice]) -> str:
        alerts = [notice.alert for notice in notices]
        if any(alert.severity is Severity.CRITICAL for alert in alerts):
            return self._mention_critical
        if any(alert.category is Category.SECURITY for alert in alerts):
            return self._mention_security
        return ""

    def _embed(self, notice: Notice) -> tuple[dict[str, Any], Notice]:
        alert = notice.alert
        critical = alert.severity is Severity.CRITICAL
        icon = CRITICAL_ICON if critical else ICONS[alert.category]
        fields = [(name, value) for name, value in alert.evidence.items()]
        if notice.repeats:
            last = utc(notice.last_at or alert.at)
            fields.insert(
                0,
                ("Repeated", f"{notice.repeats} (first {_clock(alert.at)}, last {_clock(last)})"),
            )
        if alert.statement_ids:
            fields.append(("Statements", ", ".join(map(str, alert.statement_ids))))
        if alert.investigate:
            fields.append(("Investigate", _code(alert.investigate, LIMITS["field_value"])))
        if len(fields) > LIMITS["fields"]:
            hidden = len(fields) - LIMITS["fields"] + 1
            fields = [*fields[: LIMITS["fields"] - 1], ("More", f"{hidden} more fields")]
        embed: dict[str, Any] = {
            "title": _cut(f"{icon} {notice.title}", LIMITS["title"]),
            "color": CRITICAL_COLOUR if critical else COLOURS[alert.category],
            "timestamp": utc(alert.at).isoformat(),
            "footer": {
                # The key first: a receiver de-duplicates on it, and a cut keeps it.
                "text": _cut(f"key {alert.key} · {alert.rule} · {alert.severity}", LIMITS["footer"])
            },
            "fields": [
                {
                    "name": _cut(name, LIMITS["field_name"]) or _EMPTY,
                    "value": _cut(value, LIMITS["field_value"]) or _EMPTY,
                    "inline": len(value) <= _SHORT_FIELD,
                }
                for name, value in fields
            ],
        }
        if alert.summary:
            embed["description"] = _cut(alert.summary, LIMITS["description"])
        _shrink(embed, LIMITS["total"])
        return embed, notice


def _pack(
    embeds: Iterable[tuple[dict[str, Any], Notice]],
) -> list[list[tuple[dict[str, Any], Notice]]]:
    """Group embeds into messages of at most 10 embeds and 6000 characters."""
    groups: list[list[tuple[dict[str, Any], Notice]]] = []
    used = 0
    for item in embeds:
        size = _size(item[0])
        if not groups or len(groups[-1]) == LIMITS["embeds"] or used + size > LIMITS["total"]:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return groups


def _shrink(embed: dict[str, Any], budget: int) -> None:
    """
    Cut an embed to *budget* characters, losing the least useful text first.

    Long field values go down to a few lines and a long description to a few paragraphs,
    then fields go from the end, then the description is cut further, then the title;
    the footer (which holds the key) stays.
    """
    fields = embed["fields"]
    for field in fields:
        if _size(embed) <= budget:
            return
        field["value"] = _cut(field["value"], _FIELD_FLOOR)
    if _size(embed) > budget and "description" in embed:
        embed["description"] = _cut(embed["description"], _DESCRIPTION_FLOOR)
    while fields and _size(embed) > budget:
        fields.pop()
    for part in ("description", "title"):
        excess = _size(embed) - budget
        if excess > 0 and part in embed:
            embed[part] = _cut(embed[part], max(_units(embed[part]) - excess, 1))


def _size(embed: dict[str, Any]) -> int:
    """Characters of an embed as Discord adds them up against its 6000."""
    return (
        _units(embed.get("title", ""))
        + _units(embed.get("description", ""))
        + _units(embed.get("footer", {}).get("text", ""))
        + _units(embed.get("author", {}).get("name", ""))
        + sum(_units(f["name"]) + _units(f["value"]) for f in embed.get("fields", ()))
    )


def _units(text: str) -> int:
    """Length in UTF-16 code units: characters beyond the BMP count twice."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _cut(text: str, limit: int) -> str:
    """*text* cut to *limit* UTF-16 code units, an ellipsis marking the cut."""
    if _units(text) <= limit:
        return text
    kept = text.encode("utf-16-le")[: (limit - 1) * 2].decode("utf-16-le", errors="ignore")
    return kept + _ELLIPSIS


def _code(text: str, limit: int) -> str:
    """*text* in a code block of at most *limit* units, the fence kept whole when cut."""
    fence = "```"
    return f"{fence}\n{_cut(text, limit - 2 * len(fence) - 2)}\n{fence}"


def _clock(moment: datetime) -> str:
    return utc(moment).strftime("%Y-%m-%d %H:%M:%SZ")


def _allowed(mention: str) -> dict[str, list[str]]:
    """The ``allowed_mentions`` that lets exactly *mention* ping, or nobody."""
    match = _MENTION.fullmatch(mention) if mention else None
    if match is None:
        return {"parse": []}
    if match["role"]:
        return {"parse": [], "roles": [match["role"]]}
    if match["user"]:
        return {"parse": [], "users": [match["user"]]}
    return {"parse": ["everyone"]}  # covers @here too


def _body_retry_after(body: bytes) -> float | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return bounded_wait(data.get("retry_after")) if isinstance(data, dict) else None
