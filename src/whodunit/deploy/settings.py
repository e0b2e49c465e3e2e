"""
Deploy settings: the ``[deploy]`` table of ``whodunit.toml`` and one sub-table per component.

The contract of every whodunit setting holds here too: flags > environment > file >
defaults, and every key has an environment name, ``WHODUNIT_DEPLOY_<KEY>`` for
``[deploy]`` and ``WHODUNIT_DEPLOY_<COMPONENT>_<KEY>`` for ``[deploy.<component>]``,
so a container renders its configs without a file.

A component declares its settings as a frozen dataclass whose fields come from
`setting` and `secret`; this module reads, types and range-checks them, so a typo or
an impossible pool size fails here, naming the setting and where it came from, before
anything is written.

Secrets (passwords) are never read from the settings file, which tends to end up in
version control: only from ``WHODUNIT_DEPLOY_<COMPONENT>_<KEY>``, from the file named
by ``WHODUNIT_DEPLOY_<COMPONENT>_<KEY>_FILE``, or from the file named by the setting
``<key>_file`` (a path relative to the settings file).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whodunit.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "DeploySettings",
    "Secret",
    "env_name",
    "load",
    "secret",
    "secret_fields",
    "setting",
]

ENV_PREFIX = "WHODUNIT_DEPLOY_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Secret:
    """A password and where it came from; its value never shows in a repr or a log."""

    value: str = field(repr=False)
    origin: str

    def __str__(self) -> str:
        return f"<secret from {self.origin}>"


def setting(
    default: Any,
    doc: str,
    *,
    low: int | None = None,
    high: int | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """
    Declare one setting of a component's settings dataclass.

    Args:
        default: The value when neither the file nor the environment gives one.
        doc: One line for the settings reference in ``docs/deploy.md``.
        low: Smallest whole number allowed.
        high: Largest whole number allowed.
        choices: The only strings allowed.
    """
    metadata = {"doc": doc, "low": low, "high": high, "choices": choices}
    return field(default=default, metadata=metadata)


def secret(doc: str) -> dict[str, Any]:
    """
    The metadata of a secret field (``field(default=None, metadata=secret(...))``).

    A secret is read from the environment or a file, never from the settings file.
    """
    return {"doc": doc, "secret": True}


def secret_fields(settings_type: type) -> list[str]:
    """Return the names of the secrets a component's settings declare."""
    return [f.name for f in dataclasses.fields(settings_type) if f.metadata.get("secret")]


def env_name(component: str | None, key: str) -> str:
    """Return the environment variable of ``deploy.<component>.<key>``."""
    middle = f"{component}_" if component else ""
    return f"{ENV_PREFIX}{middle}{key}".upper()


@dataclass(frozen=True)
class DeploySettings:
    """
    The ``[deploy]`` settings, validated.

    Args:
        out: Where ``whodunit deploy render`` writes (``--out`` wins).
        components: The components to render, in order.
        sections: Each component's own settings, by component name.
        source: The settings file, or "defaults".
    """

    out: Path | None
    components: tuple[str, ...]
    sections: Mapping[str, Any]
    source: str = "defaults"


def load(
    registry: Mapping[str, type],
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> DeploySettings:
    """
    Read ``[deploy]`` from *path* (or ``WHODUNIT_CONFIG``) and apply the environment.

    Args:
        registry: Each known component's name and settings dataclass.
        path: The settings file; other tables in it are not read here.
        environ: The environment (default: ``os.environ``).

    Raises:
        ConfigError: A key is unknown, a value has the wrong type or range, or a
            secret's file cannot be read.
    """
    env = os.environ if environ is None else environ
    path = path or env.get("WHODUNIT_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults"
    base = Path.cwd()
    if path:
        data = _table(_read(Path(path)).get("deploy", {}), "[deploy]", str(path))
        source = str(path)
        base = Path(path).parent
    known = {"out", "components", *registry}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"unknown setting deploy.{key} in {source}: known are "
                + ", ".join(f"deploy.{k}" for k in sorted(known))
            )
    from_env = _environment(env, registry)
    top = {**data, **from_env.pop(None, {})}
    components = _components(top.get("components", list(registry)), registry, source)
    sections = {
        name: _section(
            name,
            settings_type,
            _table(data.get(name, {}), f"[deploy.{name}]", source),
            from_env.get(name, {}),
            env,
            source,
            base,
        )
        for name, settings_type in registry.items()
    }
    out = top.get("out")
    if out is not None and not isinstance(out, str):
        raise ConfigError(f"deploy.out in {source} must be a path (a string), got {out!r}")
    return DeploySettings(
        out=Path(out) if out else None,
        components=components,
        sections=sections,
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


def _table(value: Any, name: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} in {source} must be a table, got {value!r}")
    return value


def _environment(
    env: Mapping[str, str], registry: Mapping[str, type]
) -> dict[str | None, dict[str, str]]:
    """Sort ``WHODUNIT_DEPLOY_*`` variables by component; an unknown one is an error."""
    found: dict[str | None, dict[str, str]] = {}
    # Longest names first, so a component "a_b" is not taken for "a" with key "b_...".
    prefixes = sorted(((env_name(name, ""), name) for name in registry), reverse=True)
    for variable, value in env.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        for prefix, name in prefixes:
            if variable.startswith(prefix):
                found.setdefault(name, {})[variable.removeprefix(prefix).lower()] = value
                break
        else:
            key = variable.removeprefix(ENV_PREFIX).lower()
            if key not in {"out", "components"}:
                raise ConfigError(
                    f"unknown setting {variable} in the environment: known are "
                    f"{env_name(None, 'out')}, {env_name(None, 'components')} and "
                    + ", ".join(f"{env_name(name, '<key>')}" for name in registry)
                )
            found.setdefault(None, {})[key] = value
    return found


def _components(value: Any, registry: Mapping[str, type], source: str) -> tuple[str, ...]:
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"deploy.components in {source} must be a list of names, got {value!r}")
    names = [name for name in names if name]
    for name in names:
        if name not in registry:
            raise ConfigError(
                f"deploy.components in {source} names {name!r}, which whodunit cannot "
                f"render: known are {', '.join(registry)}"
            )
    return tuple(dict.fromkeys(names))


def _section(
    component: str,
    settings_type: type,
    from_file: dict[str, Any],
    from_env: dict[str, str],
    env: Mapping[str, str],
    source: str,
    base: Path,
) -> Any:
    """Build one component's settings: file values, then environment values over them."""
    fields = {f.name: f for f in dataclasses.fields(settings_type)}
    hints = typing.get_type_hints(settings_type)
    secrets = {name for name, f in fields.items() if f.metadata.get("secret")}
    plain = set(fields) - secrets
    file_keys = {f"{name}_file" for name in secrets}
    values: dict[str, Any] = {}
    for key, value in from_file.items():
        name = f"deploy.{component}.{key}"
        if key in secrets:
            raise ConfigError(
                f"{name} in {source}: secrets are not read from the settings file; set "
                f"{key}_file to a file holding it, or {env_name(component, key)}"
                f" / {env_name(component, key)}_FILE"
            )
        if key not in plain and key not in file_keys:
            raise _unknown(name, source, sorted(plain | file_keys), component)
        if key in plain:
            values[key] = _check(fields[key], hints[key], value, name, source)
    for key, raw in from_env.items():
        variable = env_name(component, key)
        if key in plain:
            values[key] = _check(
                fields[key], hints[key], _from_text(hints[key], raw, variable), variable, ""
            )
        elif key not in secrets and key not in file_keys:
            raise _unknown(variable, "the environment", sorted(plain | file_keys), component)
    for key in sorted(secrets):
        values[key] = _secret(component, key, from_file.get(f"{key}_file"), env, source, base)
    result = settings_type(**values)
    validate = getattr(result, "validate", None)
    if validate is not None:
        validate()
    return result


def _unknown(name: str, source: str, known: list[str], component: str) -> ConfigError:
    return ConfigError(
        f"unknown setting {name} in {source}: known are "
        + ", ".join(f"deploy.{component}.{k}" for k in known)
    )


def _secret(
    component: str,
    key: str,
    file_setting: Any,
    env: Mapping[str, str],
    source: str,
    base: Path,
) -> Secret | None:
    """Find one secret: its variable, else its ``_FILE`` variable, else ``<key>_file``."""
    variable = env_name(component, key)
    if variable in env and f"{variable}_FILE" in env:
        raise ConfigError(
            f"both {variable} and {variable}_FILE are set: keep one, so it is clear which "
            f"deploy.{component}.{key} is used"
        )
    if variable in env:
        if not env[variable]:
            raise ConfigError(f"{variable} is empty: set the password, or unset it")
        return Secret(env[variable], variable)
    if f"{variable}_FILE" in env:
        return _read_secret(Path(env[f"{variable}_FILE"]), f"{variable}_FILE")
    if file_setting is None:
        return None
    name = f"deploy.{component}.{key}_file"
    if not isinstance(file_setting, str) or not file_setting:
        raise ConfigError(f"{name} in {source} must be a path (a string), got {file_setting!r}")
    return _read_secret(base / file_setting, f"{name} in {source}")


def _read_secret(path: Path, origin: str) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the secret file {path} named by {origin}: {exc}") from exc
    # Editors and `echo` end files with a newline; it is never part of the password.
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ConfigError(f"the secret file {path} named by {origin} is empty")
    return Secret(value, f"{origin} ({path})")


def _from_text(kind: Any, raw: str, variable: str) -> Any:
    """Turn an environment variable's text into the setting's type."""
    if kind is bool:
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigError(f"{variable} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a whole number, got {raw!r}") from None
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _check(spec: dataclasses.Field[Any], kind: Any, value: Any, name: str, source: str) -> Any:
    """Check *value* against the setting's type, range and choices; return it typed."""
    where = f" in {source}" if source else ""
    if kind is int:
        low, high = spec.metadata["low"], spec.metadata["high"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            bounds = " ".join(
                part
                for part in (
                    f"from {low}" if low is not None else "",
                    f"to {high}" if high is not None else "",
                )
                if part
            )
            raise ConfigError(f"{name}{where} must be a whole number {bounds}, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}{where} must be true or false, got {value!r}")
    elif typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}{where} must be a list of strings, got {value!r}")
        value = tuple(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{name}{where} must be a string, got {value!r}")
    elif spec.metadata["choices"] and value not in spec.metadata["choices"]:
        raise ConfigError(
            f"{name}{where} must be one of {', '.join(spec.metadata['choices'])}, got {value!r}"
        )
    return value
