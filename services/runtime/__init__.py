"""The runtime both daemons share: config, logging, metrics, health, shutdown, systemd notify.

Names are loaded from their modules on first use, so importing one light module of the runtime
(`agent_infra.runtime.parsing`, which the client's CLI shares) does not load gRPC servers, aiohttp,
prometheus_client and pydantic with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, ConfigSpec, Option
    from .daemon import Daemon, DaemonApp, DaemonContext, HealthState, StartupError
    from .entry import package_version, run_daemon
    from .parsing import TRUTHY, parse_duration, truthy
    from .settings import DaemonSettings, Section, common_options
    from .values import Address, Duration, HostPort

_MODULES = {
    "config": ("ConfigError", "ConfigSpec", "Option"),
    "daemon": ("Daemon", "DaemonApp", "DaemonContext", "HealthState", "StartupError"),
    "entry": ("package_version", "run_daemon"),
    "parsing": ("TRUTHY", "parse_duration", "truthy"),
    "settings": ("DaemonSettings", "Section", "common_options"),
    "values": ("Address", "Duration", "HostPort"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "TRUTHY", "Address", "ConfigError", "ConfigSpec", "Daemon", "DaemonApp", "DaemonContext",
    "DaemonSettings", "Duration", "HealthState", "HostPort", "Option", "Section",
    "StartupError", "common_options", "package_version", "parse_duration", "run_daemon", "truthy",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
