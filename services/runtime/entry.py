"""Command-line entry shared by both daemons: parse flags, load config, run, map to exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from . import logs
from .config import CONFIG_ERROR_EXIT, ConfigError, ConfigSpec, build_arg_parser, load_config
from .daemon import Daemon, DaemonApp, StartupError
from .settings import DaemonSettings

STARTUP_ERROR_EXIT = 1


def package_version() -> str:
    try:
        return metadata.version("agent-infra")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def run_daemon(
    spec: ConfigSpec,
    make_app: Callable[[DaemonSettings], DaemonApp],
    argv: Sequence[str] | None = None,
) -> int:
    """Run a daemon to completion and return its exit status."""
    args = build_arg_parser(spec).parse_args(argv)
    version = package_version()
    if args.version:
        print(f"{spec.daemon} {version}")
        return 0
    try:
        loaded = load_config(spec, args, dict(os.environ))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return CONFIG_ERROR_EXIT
    settings: DaemonSettings = loaded.settings  # type: ignore[assignment]
    logs.configure_logging(settings.log.level, settings.log.format)
    daemon = Daemon(spec, settings, make_app(settings), reload_args=args, version=version)
    try:
        return asyncio.run(daemon.run())
    except StartupError as exc:
        logs.get_logger("daemon").error("startup_failed", error=str(exc))
        print(f"{spec.daemon}: {exc}", file=sys.stderr)
        return STARTUP_ERROR_EXIT
