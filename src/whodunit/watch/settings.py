"""
Watcher settings: ``[watch]`` and ``[detectors.<rule>]`` in ``whodunit.toml``.

The contract of every whodunit setting holds (`whodunit.config`): flags > environment >
file > defaults, and every key has an environment name, ``WHODUNIT_WATCH_<KEY>`` and
``WHODUNIT_DETECTORS_<RULE>_<KEY>`` (``WHODUNIT_DETECTORS_MASS_DELETE_STATEMENT_ROWS``).
Environment values are text: lists are comma-separated, durations ``90s``, ``10m``,
``1h``, ``1d`` or a number of seconds, booleans ``true`` / ``false``.

Everything is checked when loaded, so a typo stops ``whodunit watch`` at start-up rather
than at the first incident: an unknown detector or key, a negative threshold, a
malformed network or time zone is a `ConfigError` naming the setting, the value and
where it came from.

Example::

    [watch]
    name = "prod"
    poll_interval = 1.0
    metrics_port = 9849

    [detectors.mass_delete]
    statement_rows = 500
    ignore_tables = ["public.sessions", "audit_tmp.*"]

    [detectors.human_access]
    allow_cidrs = ["10.20.0.0/16"]
    only_off_hours = true
    timezone = "Europe/Paris"

    [detectors.failure_burst]
    enabled = false
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from whodunit.config import _read, _section
from whodunit.errors import ConfigError
from whodunit.watch.alert import Severity
from whodunit.watch.detectors import (
    DETECTORS,
    DetectorOptions,
    Network,
    WorkingHours,
    option,
)

__all__ = ["DEFAULT_METRICS_PORT", "Settings", "WatchSettings", "env_name", "load"]

#: Where ``/metrics`` listens unless told otherwise (on 127.0.0.1 only).
DEFAULT_METRICS_PORT = 9849
_WATCH_ENV = "WHODUNIT_WATCH_"
_DETECTORS_ENV = "WHODUNIT_DETECTORS_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class WatchSettings:
    """
    The ``[watch]`` settings.

    Args:
        name: The watcher's name: its checkpoint, and the lock that keeps a second
            watcher of the same name from running.
        poll_interval: Seconds between reads when no NOTIFY wakes the watcher earlier.
        batch_size: Rows read per page; bounds memory when far behind.
        start: Where the first run begins: ``now`` or ``beginning`` (the whole trail).
        snippet_chars: SQL and error texts in alerts are cut to this length.
        metrics_address: The address ``/metrics`` listens on.
        metrics_port: Its port; 0 switches the endpoint off.
        metrics_max_label_values: Distinct actors (and tables) per metric before the
            rest are counted as ``other``.
        backoff_max: The longest wait, in seconds, between reconnection attempts.
    """

    name: str = "default"
    poll_interval: float = option(1.0, low=0.01)
    batch_size: int = option(5000, low=1)
    start: str = option("now", choices=("now", "beginning"))
    snippet_chars: int = option(300, low=20)
    metrics_address: str = "127.0.0.1"
    metrics_port: int = option(DEFAULT_METRICS_PORT, high=65535)
    metrics_max_label_values: int = option(50, low=1)
    backoff_max: float = option(30.0, low=0.1)


@dataclass(frozen=True)
class Settings:
    """
    Everything ``whodunit watch`` reads, validated.

    Args:
        dsn: The audited database (the settings file's ``dsn`` or ``WHODUNIT_DSN``).
        watch: See `WatchSettings`.
        detectors: The options of every detector, by rule name.
        source: The settings file, or "defaults".
    """

    dsn: str | None = None
    watch: WatchSettings = field(default_factory=WatchSettings)
    detectors: Mapping[str, DetectorOptions] = field(
        default_factory=lambda: {rule: kind.options_type() for rule, kind in DETECTORS.items()}
    )
    source: str = "defaults"

    def __repr__(self) -> str:
        # The DSN may carry a password: never print it.
        dsn = "set" if self.dsn else None
        return f"Settings(dsn={dsn!r}, watch={self.watch!r}, source={self.source!r})"


def env_name(section: str, key: str) -> str:
    """The environment variable of *key* in ``[watch]`` or ``[detectors.<rule>]``."""
    if section == "watch":
        return f"{_WATCH_ENV}{key}".upper()
    return f"{_DETECTORS_ENV}{section}_{key}".upper()


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """
    Read ``[watch]`` and ``[detectors.*]`` from *path* (or ``WHODUNIT_CONFIG``), then the
    environment over them.

    Raises:
        ConfigError: The file is missing or malformed, a detector or key is unknown, or a
            value has the wrong type or range.
    """
    env = os.environ if environ is None else environ
    path = path or env.get("WHODUNIT_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        data = _read(Path(path))
        source = str(path)
    watch_env, detectors_env = _environment(env)
    tables = _section(data, "detectors", source)
    for rule in tables:
        if rule not in DETECTORS:
            raise ConfigError(
                # No brackets: the CLI prints messages as rich markup.
                f"unknown detector {rule!r} (section detectors.{rule}) in {source}: known are "
                + ", ".join(DETECTORS)
            )
    dsn = env.get("WHODUNIT_DSN") or data.get("dsn")
    if dsn is not None and not isinstance(dsn, str):
        raise ConfigError(f"dsn in {source} must be a string, got {dsn!r}")
    return Settings(
        dsn=dsn,
        watch=_build(WatchSettings, "watch", _section(data, "watch", source), watch_env, source),
        detectors={
            rule: _build(
                kind.options_type,
                f"detectors.{rule}",
                _table(tables.get(rule, {}), f"detectors.{rule}", source),
                detectors_env.get(rule, {}),
                source,
            )
            for rule, kind in DETECTORS.items()
        },
        source=source,
    )


def _table(value: Any, name: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} in {source} must be a table, got {value!r}")
    return value


def _environment(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Sort the ``WHODUNIT_WATCH_*`` and ``WHODUNIT_DETECTORS_*`` variables by section."""
    watch: dict[str, str] = {}
    detectors: dict[str, dict[str, str]] = {}
    # Longest rule names first, so no rule is taken for a shorter one it starts with.
    prefixes = sorted(((env_name(rule, ""), rule) for rule in DETECTORS), reverse=True)
    for variable, value in env.items():
        if variable.startswith(_WATCH_ENV):
            watch[variable.removeprefix(_WATCH_ENV).lower()] = value
        elif variable.startswith(_DETECTORS_ENV):
            for prefix, rule in prefixes:
                if variable.startswith(prefix):
                    detectors.setdefault(rule, {})[variable.removeprefix(prefix).lower()] = value
                    break
            else:
                raise ConfigError(
                    f"{variable} in the environment names no known detector: known are "
                    + ", ".join(env_name(rule, "<key>") for rule in DETECTORS)
                )
    return watch, detectors


def _build(
    kind: type[Any],
    section: str,
    from_file: Mapping[str, Any],
    from_env: Mapping[str, str],
    source: str,
) -> Any:
    """One section's dataclass: defaults, the file's values, the environment's over them."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for key, value in from_file.items():
        if key not in fields:
            raise _unknown(f"{section}.{key}", source, section, fields)
        values[key] = _check(fields[key], hints[key], value, f"{section}.{key} in {source}")
    for key, raw in from_env.items():
        variable = env_name(section.removeprefix("detectors."), key)
        if key not in fields:
            raise _unknown(variable, "the environment", section, fields)
        values[key] = _check(fields[key], hints[key], _from_text(hints[key], raw), variable)
    return kind(**values)


def _unknown(name: str, source: str, section: str, fields: Mapping[str, Any]) -> ConfigError:
    return ConfigError(
        f"unknown setting {name} in {source}: known are "
        + ", ".join(f"{section}.{key}" for key in fields)
    )


def _from_text(kind: Any, raw: str) -> Any:
    """An environment variable's text as the value a settings file would hold."""
    text = raw.strip()
    if kind is bool and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return raw
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return raw
    if typing.get_origin(kind) is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _check(spec: dataclasses.Field[Any], kind: Any, value: Any, name: str) -> Any:
    """Check *value* against the setting's type and limits; return it typed."""
    low, high = spec.metadata.get("low"), spec.metadata.get("high")
    choices: tuple[str, ...] = spec.metadata.get("choices", ())
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        whole = kind is int
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            noun = "a whole number" if whole else "a number"
            raise ConfigError(f"{name} must be {noun}, got {value!r}")
        _range(value, 0 if low is None else low, high, name)
        return kind(value)
    if kind is timedelta:
        return _duration(value, name)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_item(item, v, name, choices) for v in value)
    return _item(kind, value, name, choices)


def _item(kind: Any, value: Any, name: str, choices: tuple[str, ...]) -> Any:
    """One text value (alone or in a list) as its type."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    try:
        if kind == Network:
            return ipaddress.ip_network(value, strict=False)
        if kind is Severity:
            return Severity(value)
        if kind is WorkingHours:
            return WorkingHours.parse(value)
        if kind is ZoneInfo:
            return ZoneInfo(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {value!r} is not {_NOUNS[kind]}") from exc
    except ZoneInfoNotFoundError as exc:
        raise ConfigError(
            f"{name}: {value!r} is not a known time zone; use an IANA name such as "
            "Europe/Paris or UTC"
        ) from exc
    return value


_NOUNS: dict[Any, str] = {
    Network: "a network: give an address or a CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32",
    Severity: "a severity: critical, warning or info",
    WorkingHours: "a span of hours such as 08:00-18:00",
    ZoneInfo: "a time zone such as Europe/Paris",
}


def _range(value: float, low: float, high: float | None, name: str) -> None:
    if value < low or (high is not None and value > high):
        bounds = f"from {low:g}" + (f" to {high:g}" if high is not None else "")
        raise ConfigError(f"{name} must be {bounds}, got {value!r}")


def _duration(value: Any, name: str) -> timedelta:
    """A duration: seconds as a number, or text such as ``90s``, ``10m``, ``1h``, ``1d``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip().lower())
        if not isinstance(value, str) or not match:
            raise ConfigError(
                f"{name} must be a duration such as 30s, 10m, 1h or a number of seconds, "
                f"got {value!r}"
            )
        seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ConfigError(f"{name} must be longer than 0, got {value!r}")
    return timedelta(seconds=seconds)
