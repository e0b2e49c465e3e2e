"""
Notification settings: ``[discord]``, ``[smtp]``, ``[webhook]``, ``[alertmanager]``,
``[relay]`` and ``[outbox]`` in ``whodunit.toml``, each key overridden by
``WHODUNIT_<SECTION>_<KEY>`` in the environment (flags, where a command has them, win
over both), as for every whodunit setting (`whodunit.config`).

Everything is checked when loaded: a URL that is not https (loopback aside), a mention
that could never ping, an unknown key, a receiver named but not configured; so a typo
stops ``whodunit watch`` or ``whodunit relay`` at start-up, not at the first incident.
Secrets (webhook URLs, the SMTP password, the webhook signing secret, the relay token)
are held in `Secret`, which never shows its value; prefer the ``*_file`` keys, which read
them from a file (a container secret), to writing them in the settings file.

Example::

    [discord]
    webhook_url_file = "/run/secrets/discord_webhook"
    mention_critical = "@everyone"
    mention_security = "<@&123456789012345678>"   # a role

    [smtp]
    host = "smtp.example.com"
    username = "alerts"
    password_file = "/run/secrets/smtp_password"
    from = "whodunit@example.com"
    to = ["oncall@example.com"]
    min_severity = "critical"
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whodunit.config import _read, _section
from whodunit.errors import ConfigError
from whodunit.loki import _is_loopback
from whodunit.watch.alert import Severity
from whodunit.watch.notifiers.alertmanager import AlertmanagerNotifier
from whodunit.watch.notifiers.base import Notifier, check_url
from whodunit.watch.notifiers.discord import DiscordNotifier, check_mention, check_username
from whodunit.watch.notifiers.email import EmailNotifier
from whodunit.watch.notifiers.webhook import WebhookNotifier

__all__ = [
    "CHANNELS",
    "AlertmanagerSettings",
    "DiscordSettings",
    "NotifySettings",
    "OutboxSettings",
    "RelaySettings",
    "Secret",
    "SmtpSettings",
    "WebhookSettings",
    "build_notifiers",
    "check_listen",
    "load",
]

#: The notification channels, in the order they are tried; ``email`` is set up in [smtp].
CHANNELS = ("discord", "email", "webhook", "alertmanager")
# The setting that turns each channel on.
_SWITCH = {"discord": ("discord", "webhook_url"), "email": ("smtp", "host"),
           "webhook": ("webhook", "url"), "alertmanager": ("alertmanager", "url")}  # fmt: skip
_SEVERITIES = ", ".join(severity.value for severity in Severity)


class Secret:
    """A secret value that shows as ``***`` in reprs, f-strings and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DiscordSettings:
    """``[discord]``: the webhook and who gets pinged."""

    webhook_url: Secret | None = None
    username: str = "whodunit"
    avatar_url: str | None = None
    mention_critical: str = "@everyone"
    mention_security: str = "@here"
    min_severity: Severity = Severity.INFO
    timeout: float = 10.0


@dataclass(frozen=True)
class SmtpSettings:
    """``[smtp]``: the mail server and the recipients (the ``email`` channel)."""

    host: str | None = None
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: Secret | None = None
    sender: str | None = None
    to: tuple[str, ...] = ()
    ca_file: str | None = None
    min_severity: Severity = Severity.WARNING
    timeout: float = 10.0


@dataclass(frozen=True)
class WebhookSettings:
    """``[webhook]``: a generic JSON receiver."""

    url: Secret | None = None
    secret: Secret | None = None
    min_severity: Severity = Severity.INFO
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertmanagerSettings:
    """``[alertmanager]``: where alerts join Alertmanager's routing."""

    url: str | None = None
    generator_url: str | None = None
    min_severity: Severity = Severity.INFO
    timeout: float = 10.0


@dataclass(frozen=True)
class RelaySettings:
    """``[relay]``: where ``whodunit relay`` listens for Alertmanager."""

    listen: str = "127.0.0.1"
    port: int = 9095
    token: Secret | None = None
    deadline: float = 30.0


@dataclass(frozen=True)
class OutboxSettings:
    """``[outbox]``: grouping, retry and retention of the durable outbox."""

    group_window: float = 300.0
    max_backoff: float = 300.0
    keep_days: int = 30


@dataclass(frozen=True)
class NotifySettings:
    """All notification settings, validated."""

    discord: DiscordSettings = field(default_factory=DiscordSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    source: str = "defaults"

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels that are configured, in `CHANNELS` order."""
        configured = {
            "discord": self.discord.webhook_url is not None,
            "email": self.smtp.host is not None,
            "webhook": self.webhook.url is not None,
            "alertmanager": self.alertmanager.url is not None,
        }
        return tuple(name for name in CHANNELS if configured[name])

    def routes(self, only: Sequence[str] | None = None) -> dict[str, Severity]:
        """
        Each channel to use, with the least severity it is sent.

        Args:
            only: Receiver names to use (default: every configured channel).

        Raises:
            ConfigError: An unknown receiver, or one that is not configured.
        """
        minimum = {
            "discord": self.discord.min_severity,
            "email": self.smtp.min_severity,
            "webhook": self.webhook.min_severity,
            "alertmanager": self.alertmanager.min_severity,
        }
        return {name: minimum[name] for name in self._select(only)}

    def _select(self, only: Sequence[str] | None) -> tuple[str, ...]:
        if only is None:
            return self.channels
        for name in only:
            if name not in CHANNELS:
                raise ConfigError(f"unknown receiver {name!r}: known are {', '.join(CHANNELS)}")
            if name not in self.channels:
                raise ConfigError(
                    f"receiver {name!r} is not configured: set {_label(*_SWITCH[name])}"
                )
        return tuple(name for name in CHANNELS if name in only)


def build_notifiers(
    settings: NotifySettings, only: Sequence[str] | None = None
) -> dict[str, Notifier]:
    """
    Make the notifier of each channel to use, by name.

    Args:
        settings: Loaded with `load`.
        only: Receiver names (default: every configured channel).

    Raises:
        ConfigError: See `NotifySettings.routes`.
    """
    built: dict[str, Notifier] = {}
    for name in settings.routes(only):
        built[name] = _build(name, settings)
    return built


def _build(name: str, settings: NotifySettings) -> Notifier:
    if name == "discord":
        discord = settings.discord
        assert discord.webhook_url is not None
        return DiscordNotifier(
            discord.webhook_url.reveal(),
            username=discord.username,
            avatar_url=discord.avatar_url,
            mention_critical=discord.mention_critical,
            mention_security=discord.mention_security,
            timeout=discord.timeout,
        )
    if name == "email":
        smtp = settings.smtp
        assert smtp.host is not None
        assert smtp.sender is not None
        return EmailNotifier(
            smtp.host,
            sender=smtp.sender,
            to=smtp.to,
            port=smtp.port,
            starttls=smtp.starttls,
            username=smtp.username,
            password=smtp.password.reveal() if smtp.password else None,
            timeout=smtp.timeout,
            ca_file=smtp.ca_file,
        )
    if name == "webhook":
        webhook = settings.webhook
        assert webhook.url is not None
        return WebhookNotifier(
            webhook.url.reveal(),
            secret=webhook.secret.reveal() if webhook.secret else None,
            timeout=webhook.timeout,
        )
    alertmanager = settings.alertmanager
    assert alertmanager.url is not None
    return AlertmanagerNotifier(
        alertmanager.url, generator_url=alertmanager.generator_url, timeout=alertmanager.timeout
    )


# The keys of each section and their types; a *_file key names a file holding a secret.
_KEYS: dict[str, dict[str, type]] = {
    "discord": {
        "webhook_url": str, "webhook_url_file": Path, "username": str, "avatar_url": str,
        "mention_critical": str, "mention_security": str, "min_severity": Severity,
        "timeout": float,
    },
    "smtp": {
        "host": str, "port": int, "starttls": bool, "username": str, "password_file": Path,
        "from": str, "to": list, "ca_file": str, "min_severity": Severity, "timeout": float,
    },
    "webhook": {
        "url": str, "url_file": Path, "secret_file": Path, "min_severity": Severity,
        "timeout": float,
    },
    "alertmanager": {"url": str, "generator_url": str, "min_severity": Severity, "timeout": float},
    "relay": {"listen": str, "port": int, "token_file": Path, "deadline": float},
    "outbox": {"group_window": float, "max_backoff": float, "keep_days": int},
}  # fmt: skip
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def load(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> NotifySettings:
    """
    Load the notification settings from *path* (or ``WHODUNIT_CONFIG``) and the environment.

    Sections of the file other than the notification ones are left to their owners.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or out of range, an
            unreadable secret file, a URL that is not https (loopback aside).
    """
    env = os.environ if environ is None else environ
    path = path or env.get("WHODUNIT_CONFIG")
    data: dict[str, Any] = _read(Path(path)) if path else {}
    source = str(path) if path else "the environment"
    values = {section: _values(section, data, env, str(path or "")) for section in _KEYS}
    return NotifySettings(
        discord=_discord(values["discord"]),
        smtp=_smtp(values["smtp"]),
        webhook=_webhook(values["webhook"]),
        alertmanager=_alertmanager(values["alertmanager"]),
        relay=_relay(values["relay"]),
        outbox=_outbox(values["outbox"]),
        source=source,
    )


def _env_name(section: str, key: str) -> str:
    return f"WHODUNIT_{section}_{key}".upper()


def _label(section: str, key: str) -> str:
    """How errors name a setting: its file key and its environment variable."""
    return f"{section}.{key} ({_env_name(section, key)})"


def _values(
    section: str, data: dict[str, Any], env: Mapping[str, str], path: str
) -> dict[str, Any]:
    """The section's values: the file's, each overridden by the environment."""
    keys = _KEYS[section]
    from_file = _section(data, section, path) if path else {}
    prefix = _env_name(section, "")
    from_env = {
        name.removeprefix(prefix).lower(): value
        for name, value in env.items()
        if name.startswith(prefix)
    }
    merged: dict[str, Any] = {}
    for origin, given in ((path, from_file), ("the environment", from_env)):
        for key, value in given.items():
            if key not in keys:
                known = ", ".join(f"{section}.{k}" for k in keys)
                where = _env_name(section, key) if origin == "the environment" else origin
                raise ConfigError(f"unknown setting {section}.{key} in {where}: known are {known}")
            kind = keys[key]
            parse = _from_text if origin == "the environment" else _from_toml
            merged[key] = parse(value, kind, f"{_label(section, key)} in {origin}")
    return merged


def _from_toml(value: Any, kind: type, name: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is Severity:
        return _severity(value, name)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def _from_text(value: str, kind: type, name: str) -> Any:
    if kind is bool:
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is list:
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if kind is Severity:
        return _severity(value, name)
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None


def _severity(value: Any, name: str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        raise ConfigError(f"{name} must be one of {_SEVERITIES}, got {value!r}") from None


def _positive(values: dict[str, Any], section: str, key: str, default: float) -> Any:
    value = values.get(key, default)
    if not value > 0:
        raise ConfigError(f"{_label(section, key)} must be more than 0, got {value!r}")
    return value


def _port(values: dict[str, Any], section: str, default: int, lowest: int) -> int:
    port: int = values.get("port", default)
    if not lowest <= port <= 65535:
        raise ConfigError(f"{_label(section, 'port')} must be from {lowest} to 65535, got {port}")
    return port


def _secret(values: dict[str, Any], section: str, key: str) -> Secret | None:
    """A secret given as *key*, or read from the file named by *key*_file (not both)."""
    direct = values.get(key)
    path: Path | None = values.get(f"{key}_file")
    if direct is not None and path is not None:
        raise ConfigError(
            f"{_label(section, key)} and {_label(section, key + '_file')} are both set: keep one"
        )
    if path is None:
        return Secret(direct) if direct else None
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{_label(section, key + '_file')}: cannot read {path}: {exc.strerror}"
        ) from exc
    if not text:
        raise ConfigError(f"{_label(section, key + '_file')}: {path} is empty")
    return Secret(text)


def _url(secret: Secret | None, section: str, key: str) -> Secret | None:
    if secret is not None:
        check_url(secret.reveal(), _label(section, key))
    return secret


def _discord(values: dict[str, Any]) -> DiscordSettings:
    return DiscordSettings(
        webhook_url=_url(_secret(values, "discord", "webhook_url"), "discord", "webhook_url"),
        username=check_username(values.get("username", "whodunit"), _label("discord", "username")),
        avatar_url=_plain_url(values, "discord", "avatar_url"),
        mention_critical=check_mention(
            values.get("mention_critical", "@everyone"), _label("discord", "mention_critical")
        ),
        mention_security=check_mention(
            values.get("mention_security", "@here"), _label("discord", "mention_security")
        ),
        min_severity=values.get("min_severity", Severity.INFO),
        timeout=_positive(values, "discord", "timeout", 10.0),
    )


def _smtp(values: dict[str, Any]) -> SmtpSettings:
    host = values.get("host")
    settings = SmtpSettings(
        host=host,
        port=_port(values, "smtp", 587, 1),
        starttls=values.get("starttls", True),
        username=values.get("username"),
        password=_secret(values, "smtp", "password"),
        sender=values.get("from"),
        to=values.get("to", ()),
        ca_file=values.get("ca_file"),
        min_severity=values.get("min_severity", Severity.WARNING),
        timeout=_positive(values, "smtp", "timeout", 10.0),
    )
    if host:
        for key, value in (("from", settings.sender), ("to", settings.to)):
            if not value:
                raise ConfigError(
                    f"{_label('smtp', key)} is not set: email needs a sender and recipients"
                )
        if settings.password and not settings.starttls and not _is_loopback(host):
            raise ConfigError(
                f"{_label('smtp', 'starttls')} is off for {host}: the password would cross "
                "the network in clear text; turn it on, or use a loopback relay"
            )
    return settings


def _webhook(values: dict[str, Any]) -> WebhookSettings:
    return WebhookSettings(
        url=_url(_secret(values, "webhook", "url"), "webhook", "url"),
        secret=_secret(values, "webhook", "secret"),
        min_severity=values.get("min_severity", Severity.INFO),
        timeout=_positive(values, "webhook", "timeout", 10.0),
    )


def _alertmanager(values: dict[str, Any]) -> AlertmanagerSettings:
    return AlertmanagerSettings(
        url=_plain_url(values, "alertmanager", "url"),
        generator_url=_plain_url(values, "alertmanager", "generator_url"),
        min_severity=values.get("min_severity", Severity.INFO),
        timeout=_positive(values, "alertmanager", "timeout", 10.0),
    )


def _relay(values: dict[str, Any]) -> RelaySettings:
    listen: str = values.get("listen", "127.0.0.1")
    token = _secret(values, "relay", "token")
    check_listen(listen, token)
    return RelaySettings(
        listen=listen,
        port=_port(values, "relay", 9095, 0),
        token=token,
        deadline=_positive(values, "relay", "deadline", 30.0),
    )


def check_listen(listen: str, token: Secret | None) -> None:
    """
    Refuse a relay address beyond loopback without a token.

    Anyone who can reach the relay can make it ping everyone on the Discord server.
    """
    if not _is_loopback(listen) and token is None:
        raise ConfigError(
            f"the relay would listen on {listen}, reachable beyond this machine: set "
            f"{_label('relay', 'token_file')} so that only Alertmanager can make it ping "
            "everyone, or listen on 127.0.0.1"
        )


def _outbox(values: dict[str, Any]) -> OutboxSettings:
    window = values.get("group_window", 300.0)
    if window < 0:
        raise ConfigError(f"{_label('outbox', 'group_window')} must be 0 or more, got {window}")
    keep_days = values.get("keep_days", 30)
    if keep_days < 1:
        raise ConfigError(f"{_label('outbox', 'keep_days')} must be 1 or more, got {keep_days}")
    return OutboxSettings(
        group_window=window,
        max_backoff=_positive(values, "outbox", "max_backoff", 300.0),
        keep_days=keep_days,
    )


def _plain_url(values: dict[str, Any], section: str, key: str) -> str | None:
    url: str | None = values.get(key)
    return check_url(url, _label(section, key)) if url else None
