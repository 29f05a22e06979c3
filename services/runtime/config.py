"""Load a daemon's settings from defaults, a TOML file, environment variables and flags.

Later layers win: defaults < TOML file < environment < command-line flags. Every value remembers
where it came from, so a validation error names the key, the value, its source and what was
expected; the daemon then exits with status 2 before binding anything.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

CONFIG_ERROR_EXIT = 2

#: the settings model a ConfigSpec validates into
SettingsT = TypeVar("SettingsT", bound=BaseModel, default=BaseModel)


class ConfigError(Exception):
    """The configuration cannot be used; the message is meant for the operator."""


@dataclass(frozen=True)
class Option:
    """One setting reachable from the environment and/or a flag.

    `key` is the dotted TOML path ("server.grpc_addr"). `convert` turns the variable's or the
    flag's text into the setting's value, or None to leave the setting alone (used for flag-like
    variables such as ENV_MANAGER_VERBOSE).
    """

    key: str
    help: str
    env: str | None = None
    flag: str | None = None
    convert: Callable[[str], object | None] | None = None


@dataclass(frozen=True)
class ConfigSpec(Generic[SettingsT]):
    daemon: str
    model: type[SettingsT]
    defaults: Mapping[str, Any]
    options: Sequence[Option]
    config_env: str
    description: str = ""
    extra_flags: Sequence[Option] = field(default_factory=tuple)


@dataclass
class LoadedConfig(Generic[SettingsT]):
    settings: SettingsT
    path: Path | None
    sources: dict[str, str]


def build_arg_parser(spec: ConfigSpec[Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=spec.daemon, description=spec.description)
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (env {spec.config_env})"
    )
    for option in spec.options:
        if option.flag is None:
            continue
        env_note = f" (env {option.env})" if option.env else ""
        parser.add_argument(
            option.flag, dest=_dest(option), metavar="VALUE", help=option.help + env_note
        )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _dest(option: Option) -> str:
    return "opt_" + option.key.replace(".", "__")


def load_config(
    spec: ConfigSpec[SettingsT], args: argparse.Namespace, environ: Mapping[str, str]
) -> LoadedConfig[SettingsT]:
    """Merge every layer and validate; raises ConfigError with a message naming the key."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _merge(values, sources, spec.defaults, "default")

    path_text = args.config or environ.get(spec.config_env) or None
    path_source = "flag --config" if args.config else f"env {spec.config_env}"
    path = Path(path_text) if path_text else None
    if path is not None:
        _merge(values, sources, _read_toml(path, path_source), f"file {path}")

    for option in spec.options:
        if option.env is None or option.env not in environ:
            continue
        raw = environ[option.env]
        value = option.convert(raw) if option.convert else raw
        if value is not None:
            _set(values, sources, option.key, value, f"env {option.env}")

    for option in spec.options:
        value = getattr(args, _dest(option), None) if option.flag else None
        if value is not None and option.convert:
            value = option.convert(value)
        if value is not None:
            _set(values, sources, option.key, value, f"flag {option.flag}")

    try:
        settings = spec.model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(spec.daemon, exc, sources)) from None
    return LoadedConfig(settings=settings, path=path, sources=sources)


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (from {source})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} (from {source}) cannot be read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _merge(
    values: dict[str, Any], sources: dict[str, str], layer: Mapping[str, Any], source: str,
    prefix: str = "",
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(values.get(key, {}), dict):
            sources.setdefault(dotted, source)
            _merge(values.setdefault(key, {}), sources, value, source, dotted + ".")
        else:
            values[key] = value
            sources[dotted] = source


def _set(
    values: dict[str, Any], sources: dict[str, str], key: str, value: object, source: str
) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    sources[key] = source


def _describe(daemon: str, exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = [f"{daemon}: invalid configuration:"]
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not key:
            # A check across the whole config: its message starts with the key at fault.
            named = message.partition(":")[0]
            lines.append(f"  {message} (from {_source_of(named, sources)})")
            continue
        source = _source_of(key, sources)
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (from {source})")
            continue
        if error["type"] == "missing":
            lines.append(f"  {key}: required, not set")
        elif isinstance(error["input"], dict | list):
            # A check on a whole table: its message names the keys at fault.
            lines.append(f"  {key} (from {source}): {message}")
        else:
            lines.append(f"  {key} = {error['input']!r} (from {source}): {message}")
    return "\n".join(lines)


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    parts = key.split(".")
    while parts:
        found = sources.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return "default"


def environ_snapshot() -> dict[str, str]:
    return dict(os.environ)
