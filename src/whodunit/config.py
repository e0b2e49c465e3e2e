"""
Settings: command-line flags > environment > ``whodunit.toml`` > defaults.

Every setting but the guards has an environment name, ``WHODUNIT_<SECTION>_<KEY>`` (and
``WHODUNIT_DSN``), so a container needs no file.  The file is found through ``--config`` or
``WHODUNIT_CONFIG``.  Values are validated once, when loaded: a typo or a negative limit
is a :class:`~whodunit.errors.ConfigError` naming the setting, the value and the source,
not a surprise at the first incident.

Example ``whodunit.toml``::

    dsn = "postgresql://whodunit@db.internal/app"

    [install]
    schemas = ["public"]
    exclude = ["sessions"]

    [capture]
    query_max_bytes = 8192
    notify_min_rows = 100
    snapshot_max_rows = 100000

    [guards."public.users"]
    max_rows = 100
    no_truncate = true
    no_drop = true
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whodunit.errors import ConfigError

__all__ = ["MAX_LIMIT", "CaptureSettings", "Guard", "InstallSettings", "Settings", "load"]

#: The largest limit a setting may take (PostgreSQL integer).
MAX_LIMIT = 2_147_483_647


@dataclass(frozen=True)
class InstallSettings:
    """What ``whodunit install`` audits."""

    schemas: tuple[str, ...] = ("public",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptureSettings:
    """
    The capture limits and their defaults (see ``whodunit configure``).

    The database keeps the values in force; settings name only the ones to change.
    """

    query_max_bytes: int = 8192
    notify_min_rows: int = 100
    snapshot_max_rows: int = 100_000


@dataclass(frozen=True)
class Guard:
    """The prevention guard of one table."""

    max_rows: int | None = None
    no_truncate: bool = False
    no_drop: bool = False


@dataclass(frozen=True)
class Settings:
    """All of whodunit's settings, validated."""

    dsn: str | None = None
    install: InstallSettings = field(default_factory=InstallSettings)
    capture: Mapping[str, int] = field(default_factory=dict)
    guards: Mapping[str, Guard] = field(default_factory=dict)
    source: str = "defaults"

    def __repr__(self) -> str:
        # The DSN may carry a password: never print it.
        dsn = "set" if self.dsn else None
        return (
            f"Settings(dsn={dsn!r}, install={self.install!r}, capture={self.capture!r}, "
            f"guards={dict(self.guards)!r}, source={self.source!r})"
        )


#: Sections of the same file that other areas load and check themselves (the deploy,
#: watch and notifier settings), so this loader lets them through.
AREA_SECTIONS = frozenset(
    {
        "deploy",
        "watch",
        "detectors",
        "outbox",
        "discord",
        "smtp",
        "webhook",
        "alertmanager",
        "relay",
    }
)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """
    Load settings from *path* (or ``WHODUNIT_CONFIG``), then apply the environment.

    Raises:
        ConfigError: the file is missing or malformed, or a value is out of range.
    """
    env = os.environ if environ is None else environ
    path = path or env.get("WHODUNIT_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        data = _read(Path(path))
        source = str(path)
    _check_keys(data, {"dsn", "install", "capture", "guards", *AREA_SECTIONS}, "", source)
    install_env: dict[str, Any] = {}
    capture_env: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith("WHODUNIT_INSTALL_"):
            install_env[key.removeprefix("WHODUNIT_INSTALL_").lower()] = _split(value)
        elif key.startswith("WHODUNIT_CAPTURE_"):
            capture_env[key.removeprefix("WHODUNIT_CAPTURE_").lower()] = _env_int(key, value)
    # The environment is checked on its own first, so an error names where it came from.
    _check_keys(
        install_env, set(InstallSettings.__dataclass_fields__), "install.", "the environment"
    )
    _capture(capture_env, "the environment")
    return Settings(
        dsn=env.get("WHODUNIT_DSN") or _typed(data.get("dsn"), str, "dsn", source),
        install=_install(_section(data, "install", source) | install_env, source),
        capture=_capture(_section(data, "capture", source) | capture_env, source),
        guards=_guards(data.get("guards", {}), source),
        source=source,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist: check --config/WHODUNIT_CONFIG"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _section(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"[{name}] in {source} must be a table, got {section!r}")
    return dict(section)


def _check_keys(data: Mapping[str, Any], known: set[str], prefix: str, source: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"unknown setting {prefix}{key} in {source}: known are "
                + ", ".join(f"{prefix}{k}" for k in sorted(known))
            )


def _install(values: dict[str, Any], source: str) -> InstallSettings:
    _check_keys(values, {"schemas", "exclude"}, "install.", source)
    schemas = _names(values.get("schemas", ["public"]), "install.schemas", source)
    if not schemas:
        raise ConfigError(f"install.schemas in {source} is empty: name at least one schema")
    return InstallSettings(schemas, _names(values.get("exclude", []), "install.exclude", source))


def _capture(values: dict[str, Any], source: str) -> dict[str, int]:
    _check_keys(values, set(CaptureSettings.__dataclass_fields__), "capture.", source)
    return {key: _limit(value, f"capture.{key}", source) for key, value in values.items()}


def _guards(values: Any, source: str) -> dict[str, Guard]:
    if not isinstance(values, dict):
        raise ConfigError(f"[guards] in {source} must be a table of tables, got {values!r}")
    guards = {}
    for table, spec in values.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"[guards.{table!r}] in {source} must be a table")
        _check_keys(spec, {"max_rows", "no_truncate", "no_drop"}, f"guards.{table}.", source)
        max_rows = spec.get("max_rows")
        guards[table] = Guard(
            max_rows=None
            if max_rows is None
            else _limit(max_rows, f"guards.{table}.max_rows", source),
            no_truncate=_typed(
                spec.get("no_truncate", False), bool, f"guards.{table}.no_truncate", source
            ),
            no_drop=_typed(spec.get("no_drop", False), bool, f"guards.{table}.no_drop", source),
        )
    return guards


def _limit(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ConfigError(
            f"{name} in {source} must be a whole number from 0 to {MAX_LIMIT}, got {value!r}"
        )
    return value


def _typed(value: Any, kind: type, name: str, source: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{name} in {source} must be a {kind.__name__}, got {value!r}")
    return value


def _names(value: Any, name: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} in {source} must be a list of names, got {value!r}")
    return tuple(value)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _env_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key} must be a whole number, got {value!r}") from None
