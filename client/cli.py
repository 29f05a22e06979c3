"""`agent-infra`: the command line for the service stack, tasks, workflows and events.

    agent-infra up --config examples/demo-stack.toml     # daemons + stack, live progress
    agent-infra run -- sh -c 'echo hello'                 # submit, wait, print its output
    agent-infra status                                    # services and queues

Commands are grouped in modules: cli_services (up, down, status, health, services, pull),
cli_tasks (submit, run, wait, tasks, cancel, events), cli_workflows (workflow ...), cli_console
(console); the output
modes live in cli_output, shared options and helpers in cli_common.

Exit codes: 0 ok, 1 the task or operation failed, 2 usage error, 3 a daemon is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from . import cli_console, cli_sandbox, cli_services, cli_tasks, cli_workflows
from .cli_common import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Context,
    HelpFormatter,
    OperationFailed,
    UsageError,
    add_global_options,
)
from .cli_output import Output
from .errors import InfraError, InfraUnavailable

__all__ = ["build_parser", "main"]

EXAMPLES = """\
examples:
  agent-infra up --config examples/demo-stack.toml
  agent-infra status
  agent-infra run -- sh -c 'echo hello from a task container'
  agent-infra submit --set command='sleep 30' --priority 5
  agent-infra tasks --status failed
  agent-infra events -f --since 10m
  agent-infra workflow run etl --input url=https://example.org --watch
  agent-infra console --open
  agent-infra sandbox exec "$(agent-infra sandbox create)" -- sh -c 'echo hi'
  agent-infra down

exit codes: 0 ok, 1 task or operation failed, 2 usage error, 3 infrastructure unreachable.
Every command has --help with examples, and --json for machine-readable output."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-infra",
        description="Control the agent-infra stack: env-manager's services and the "
                    "orchestrator's tasks, workflows and events.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_services.register(subparsers)
    cli_tasks.register(subparsers)
    cli_workflows.register(subparsers)
    cli_console.register(subparsers)
    cli_sandbox.register(subparsers)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("agent-infra")
    except metadata.PackageNotFoundError:
        return "dev"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `agent-infra` console script: runs and exits with the code."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(json_mode=args.json)
    ctx = Context(args, out)
    try:
        code: int = asyncio.run(args.func(ctx))
    except UsageError as exc:
        out.error(f"error: {exc}")
        return EXIT_USAGE
    except InfraUnavailable as exc:
        out.error(exc.details)
        return EXIT_UNAVAILABLE
    except InfraError as exc:
        out.error(f"{exc.details} ({exc.code})")
        return EXIT_FAILED
    except OperationFailed as exc:
        out.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except BrokenPipeError:
        # `agent-infra events -f | head`: the reader left; do not print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    main()
