"""What every `agent-infra` command shares: global options, the command context, argument parsing
helpers (``k=v`` payloads, times), and the exit codes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_infra.runtime.parsing import parse_duration

from ._transport import ConnectionConfig
from .cli_output import Output

if TYPE_CHECKING:
    from .env_manager import EnvManagerClient
    from .orchestrator import OrchestratorClient

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Command",
    "Context",
    "OperationFailed",
    "UsageError",
    "add_command",
    "add_command_group",
    "add_global_options",
    "parse_assignments",
    "parse_since",
    "read_json_object",
    "require_file",
]

EXIT_OK = 0
#: The task, run or operation failed (or the server refused it).
EXIT_FAILED = 1
#: Bad command line (argparse's own code).
EXIT_USAGE = 2
#: A daemon could not be reached (InfraUnavailable).
EXIT_UNAVAILABLE = 3

Command = Callable[["Context"], Awaitable[int]]


class UsageError(Exception):
    """A command-line value that cannot be used; exits 2 like argparse's own errors."""


# --- global options ------------------------------------------------------------------------------


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The connection options. On the main parser they have defaults; on each command they are
    repeated with SUPPRESS defaults, so they work before or after the command name and a later
    position never resets an earlier one.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection options")
    group.add_argument("--orchestrator", metavar="ADDR", default=default(None),
                       help="orchestrator gRPC address (default: $ORCHESTRATOR_GRPC_ADDR, "
                            "else 127.0.0.1:50052)")
    group.add_argument("--env-manager", metavar="ADDR", default=default(None),
                       help="env-manager gRPC address (default: $ENV_MANAGER_GRPC_ADDR, "
                            "else 127.0.0.1:50100)")
    token = group.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN", default=default(None),
                       help="bearer token for both daemons (default: $AGENT_INFRA_TOKEN; "
                            "prefer --token-file, a flag shows in ps)")
    token.add_argument("--token-file", metavar="FILE", default=default(None),
                       help="file holding the bearer token (default: $AGENT_INFRA_TOKEN_FILE)")
    group.add_argument("--ca-file", metavar="FILE", default=default(None),
                       help="PEM CA bundle that signed the daemons' certificates (turns TLS on)")
    group.add_argument("--timeout", metavar="SECONDS", dest="connect_timeout",
                       type=positive_float, default=default(5.0),
                       help="give up connecting to a daemon after this long (default: 5)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON (one document; JSON lines for streams)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and the examples epilog as written."""


def add_command(subparsers: Any, name: str, func: Command, *, help: str,
                examples: str, description: str | None = None,
                aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A sub-command with the connection options and an examples epilog."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, aliases=list(aliases),
        description=textwrap.dedent(description or help).strip(),
        epilog=_examples_epilog(examples), formatter_class=HelpFormatter,
    )
    add_global_options(parser, suppress=True)
    parser.set_defaults(func=func)
    return parser


def add_command_group(subparsers: Any, name: str, *, help: str, description: str,
                      examples: str) -> Any:
    """A command whose own sub-commands (`agent-infra NAME COMMAND`) are added to the returned
    subparsers; COMMAND is stored as `NAME_command`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description, epilog=_examples_epilog(examples),
        formatter_class=HelpFormatter,
    )
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _examples_epilog(examples: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ")


# --- the context a command runs with ------------------------------------------------------------


class Context:
    """Parsed arguments, the output, and clients built from the connection options."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out

    @property
    def config(self) -> ConnectionConfig:
        import os

        args = self.args
        token = args.token or None
        token_file = args.token_file or None
        if token is None and token_file is None:
            token = os.environ.get("AGENT_INFRA_TOKEN") or None
            token_file = os.environ.get("AGENT_INFRA_TOKEN_FILE") or None
            if token and token_file:
                token_file = None
        if token_file is not None and not Path(token_file).is_file():
            raise UsageError(f"--token-file {token_file}: no such file")
        if args.ca_file is not None and not Path(args.ca_file).is_file():
            raise UsageError(f"--ca-file {args.ca_file}: no such file")
        try:
            return ConnectionConfig(token=token, token_file=token_file, ca_file=args.ca_file,
                                    connect_timeout=args.connect_timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def orchestrator(self) -> OrchestratorClient:
        from .orchestrator import OrchestratorClient

        return OrchestratorClient(self.args.orchestrator, config=self.config)

    def env_manager(self) -> EnvManagerClient:
        from .env_manager import EnvManagerClient

        return EnvManagerClient(self.args.env_manager, config=self.config)


# --- argument values -----------------------------------------------------------------------------


def parse_value(text: str) -> object:
    """A ``--set`` value: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, object]:
    """``["k=v", ...]`` as a dict; values through `parse_value`."""
    result: dict[str, object] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE")
        result[key.strip()] = parse_value(value)
    return result


def read_json_object(path: str, what: str) -> dict[str, object]:
    """A JSON object from a file, or from stdin for ``-``."""
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} {path}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path}: expected a JSON object, got {type(value).__name__}")
    return value


def require_file(path: str | None, option: str) -> None:
    """A usage error when an optional file argument names no file."""
    if path and not Path(path).is_file():
        raise UsageError(f"{option} {path}: no such file")


def read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None


def parse_since(text: str, *, now: float | None = None) -> float:
    """A point in time as unix seconds, from unix seconds (``1732700000``), an ISO datetime
    (``2024-11-27T10:00:00``, local time unless it names a zone) or a duration meaning that
    long ago (``10m``, ``2h``, ``1d``).
    """
    stripped = text.strip()
    now = time.time() if now is None else now
    try:
        value = float(stripped)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UsageError(f"--since {text!r}: must not be negative")
        return value
    try:
        return max(now - parse_duration(stripped), 0.0)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: expected unix seconds, an ISO datetime "
                         f"(2024-11-27T10:00:00) or a duration ago (10m, 2h, 1d)") from None
    return moment.timestamp()  # naive: local time


class OperationFailed(Exception):
    """The daemon answered, but the operation did not succeed (exit 1)."""
