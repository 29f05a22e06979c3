"""The runtime both daemons share: config, logging, metrics, health, shutdown, systemd notify."""

from .config import ConfigError, ConfigSpec, Option, truthy
from .daemon import Daemon, DaemonApp, DaemonContext, HealthState, StartupError
from .entry import package_version, run_daemon
from .settings import DaemonSettings, Section, common_options
from .values import Address, Duration, HostPort, parse_duration

__all__ = [
    "Address", "ConfigError", "ConfigSpec", "Daemon", "DaemonApp", "DaemonContext",
    "DaemonSettings", "Duration", "HealthState", "HostPort", "Option", "Section",
    "StartupError", "common_options", "package_version", "parse_duration", "run_daemon", "truthy",
]
