"""
Notifiers: Discord, email (SMTP), a generic JSON webhook and Alertmanager.

Each sends a message once and raises `NotifierError` when it could not; the durable
outbox (`whodunit.watch.outbox`) and `deliver` decide about retries.  Settings live in
`whodunit.watch.notifiers.settings`.
"""

from __future__ import annotations

from whodunit.watch.notifiers.alertmanager import AlertmanagerNotifier
from whodunit.watch.notifiers.base import Notice, Notifier, NotifierError, deliver, mask_url
from whodunit.watch.notifiers.discord import DiscordNotifier
from whodunit.watch.notifiers.email import EmailNotifier
from whodunit.watch.notifiers.settings import NotifySettings, build_notifiers, load
from whodunit.watch.notifiers.webhook import WebhookNotifier

__all__ = [
    "AlertmanagerNotifier",
    "DiscordNotifier",
    "EmailNotifier",
    "Notice",
    "Notifier",
    "NotifierError",
    "NotifySettings",
    "WebhookNotifier",
    "build_notifiers",
    "deliver",
    "load",
    "mask_url",
]
