"""Command-line entry shared by both daemons: parse flags, load config, run, map to exit codes."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from . import logs
from .config import CONFIG_ERROR_EXIT, ConfigError, ConfigSpec, build_arg_parser, load_config
from .daemon import Daemon, DaemonApp, SettingsT, StartupError

STARTUP_ERROR_EXIT = 1
# Allocations between young-generation collections (CPython's default is 700). Each in-flight RPC
# holds dozens of container objects, so with the default nearly every collection found them still
# alive and carried them into older generations to be traversed again; a larger young generation
# lets most of them die first. Profiling a busy orchestrator put the collector at ~9% of its CPU.
GC_YOUNG_THRESHOLD = 20_000


def package_version() -> str:
    try:
        return metadata.version("agent-infra")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def run_daemon(
    spec: ConfigSpec[SettingsT],
    make_app: Callable[[SettingsT], DaemonApp[SettingsT]],
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
    settings = loaded.settings
    logs.configure_logging(settings.log.level, settings.log.format)
    daemon = Daemon(spec, settings, make_app(settings), reload_args=args, version=version)

    async def serve() -> int:
        logs.bind_to_loop(asyncio.get_running_loop())
        try:
            return await daemon.run()
        finally:
            logs.bind_to_loop(None)

    # What is alive now (modules, config) lives as long as the process: the collector need not
    # traverse it on every full collection.
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    try:
        return asyncio.run(serve())
    except ConfigError as exc:  # a check that needs the app (its HTTP routes)
        logs.get_logger("daemon").error("invalid_configuration", error=str(exc))
        print(str(exc), file=sys.stderr)
        return CONFIG_ERROR_EXIT
    except StartupError as exc:
        logs.get_logger("daemon").error("startup_failed", error=str(exc))
        print(f"{spec.daemon}: {exc}", file=sys.stderr)
        return STARTUP_ERROR_EXIT
