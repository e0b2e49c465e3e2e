"""
Email over SMTP: one message per send, plain text with an HTML alternative.

The plain text is what a pager-style mail filter and a terminal client read; the HTML part
is the same facts, laid out.  A ``Message-ID`` derived from the alert keys lets mail
clients that de-duplicate by it hide the copy a resend after a crash would deliver.

An SMTP 5xx about the message itself (recipient or content refused) is permanent; an
authentication or TLS failure is retryable, as it is a setting to fix, after which the
pending alerts should still go out.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate

from whodunit.errors import ConfigError
from whodunit.loki import _is_loopback
from whodunit.watch.alert import Severity
from whodunit.watch.notifiers.base import Notice, Notifier, NotifierError, utc

__all__ = ["EmailNotifier"]

_AUTH_CODES = frozenset({530, 534, 535, 538})
_SEVERITY_COLOURS = {Severity.CRITICAL: "#e74c3c", Severity.WARNING: "#e67e22"}
_INFO_COLOUR = "#3498db"


class EmailNotifier(Notifier):
    """
    Send notices as email through an SMTP server.

    Args:
        host: The SMTP server.
        sender: The ``From`` address.
        to: The recipients (at least one).
        port: 587 (submission with STARTTLS) by default.
        starttls: Upgrade the connection with STARTTLS before anything else is said.
        username: Log in as this user (after STARTTLS).
        password: The user's password; never shown.
        timeout: Seconds for the connection and each command.
        ca_file: PEM bundle to trust instead of the system's, for a private CA.

    Raises:
        ConfigError: No recipient, or a password that would cross the network in clear
            text (no STARTTLS to a host that is not loopback).

    .. versionadded:: 0.1
    """

    channel = "email"

    def __init__(
        self,
        host: str,
        *,
        sender: str,
        to: Sequence[str],
        port: int = 587,
        starttls: bool = True,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        if not to:
            raise ConfigError("smtp.to is empty: name at least one recipient")
        if username and password and not starttls and not _is_loopback(host):
            raise ConfigError(
                f"smtp.starttls is off for {host}: the password would cross the network in "
                "clear text; turn smtp.starttls on, or drop smtp.username/smtp.password_file"
            )
        self._host = host
        self._port = port
        self._starttls = starttls
        self._username = username
        self._password = password
        self._timeout = timeout
        self._ca_file = ca_file
        self._sender = sender
        self._to = tuple(to)

    def __repr__(self) -> str:
        password = "***" if self._password else None
        return (
            f"EmailNotifier(host={self._host!r}, port={self._port}, starttls={self._starttls}, "
            f"username={self._username!r}, password={password!r}, to={list(self._to)!r})"
        )

    def send(self, notices: Sequence[Notice]) -> None:
        if not notices:
            return
        message = self.render(notices)
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=self._ca_file))
                if self._username:
                    smtp.login(self._username, self._password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise NotifierError(
                f"email: {self._host} refused every recipient: {exc.recipients}",
                retryable=any(400 <= code < 500 for code in codes),
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise NotifierError(
                f"email: {self._host}:{self._port} answered {exc.smtp_code} "
                f"{_text_of(exc.smtp_error)}"
                + (
                    ": check smtp.username and smtp.password_file"
                    if exc.smtp_code in _AUTH_CODES
                    else ""
                ),
                retryable=exc.smtp_code < 500 or exc.smtp_code in _AUTH_CODES,
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifierError(
                f"email: cannot send through {self._host}:{self._port}: "
                f"{type(exc).__name__}: {exc}",
                retryable=True,
            ) from exc

    def render(self, notices: Sequence[Notice]) -> EmailMessage:
        """The message for *notices*: a text part and an HTML alternative."""
        first = notices[0]
        subject = f"[whodunit] {first.alert.severity.upper()}: {first.title}"
        if len(notices) > 1:
            subject += f" (+{len(notices) - 1} more)"
        keys = " ".join(notice.alert.key for notice in notices)
        message = EmailMessage()
        message["Subject"] = _one_line(subject)[:200]
        message["From"] = self._sender
        message["To"] = ", ".join(self._to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = f"<{hashlib.sha256(keys.encode()).hexdigest()[:40]}@whodunit>"
        message["X-Whodunit-Alert-Key"] = _one_line(keys)
        message.set_content("\n\n----\n\n".join(_text(notice) for notice in notices))
        message.add_alternative(_html(notices), subtype="html")
        return message


def _text_of(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _one_line(text: str) -> str:
    """Header values may not break lines (that would inject headers)."""
    return " ".join(text.split())


def _facts(notice: Notice) -> list[tuple[str, str]]:
    alert = notice.alert
    facts = list(alert.evidence.items())
    if notice.repeats:
        facts.insert(0, ("Repeated", notice.repeats))
    if alert.statement_ids:
        facts.append(("Statements", ", ".join(map(str, alert.statement_ids))))
    if alert.investigate:
        facts.append(("Investigate", alert.investigate))
    return facts


def _footer(notice: Notice) -> str:
    alert = notice.alert
    return f"key {alert.key} · rule {alert.rule} · at {utc(alert.at).isoformat()}"


def _text(notice: Notice) -> str:
    alert = notice.alert
    lines = [f"{alert.severity.upper()} · {alert.category}", notice.title, ""]
    if alert.summary:
        lines += [alert.summary, ""]
    lines += [f"{name}: {value}" for name, value in _facts(notice)]
    return "\n".join([*lines, "", _footer(notice)])


def _html(notices: Sequence[Notice]) -> str:
    parts = []
    for notice in notices:
        alert = notice.alert
        colour = _SEVERITY_COLOURS.get(alert.severity, _INFO_COLOUR)
        rows = "".join(
            f'<tr><th align="left" valign="top">{html.escape(name)}</th>'
            f"<td><code>{html.escape(value)}</code></td></tr>"
            for name, value in _facts(notice)
        )
        parts.append(
            f'<div style="border-left:4px solid {colour};padding:0 12px;margin:12px 0">'
            f"<p><b>{html.escape(alert.severity.upper())}</b> · {html.escape(alert.category)}</p>"
            f"<h2>{html.escape(notice.title)}</h2>"
            f"<p>{html.escape(alert.summary)}</p>"
            f"<table>{rows}</table>"
            f'<p style="color:#888">{html.escape(_footer(notice))}</p></div>'
        )
    return f"<!DOCTYPE html><html><body>{''.join(parts)}</body></html>"
