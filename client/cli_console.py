"""`agent-infra console`: the web console's URL (served by the orchestrator's HTTP port)."""

from __future__ import annotations

import os
import webbrowser
from typing import Any

from .cli_common import EXIT_FAILED, EXIT_OK, Context, UsageError, add_command

__all__ = ["cmd_console", "console_url", "register"]

#: The orchestrator's HTTP address when neither --http nor ORCHESTRATOR_HTTP_ADDR says.
DEFAULT_HTTP_ADDR = "127.0.0.1:9097"
HTTP_ADDR_ENV = "ORCHESTRATOR_HTTP_ADDR"
PATH = "/console/"


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers, "console", cmd_console,
        help="print (or open) the URL of the web console",
        description="""
        Print the URL of the web console the orchestrator serves on its HTTP address:
        overview, tasks, workflows, events and services, updated live. With a token set, the
        console asks for it once (a login form) and keeps a session cookie.
        https when --ca-file is given (the HTTP port then has the gRPC port's TLS).""",
        examples="""
        agent-infra console
        agent-infra console --open
        agent-infra console --http 10.0.0.5:9097 --ca-file ca.pem""")
    parser.add_argument("--http", metavar="ADDR", default=None,
                        help=f"the orchestrator's HTTP address (default: ${HTTP_ADDR_ENV}, "
                             f"else {DEFAULT_HTTP_ADDR})")
    parser.add_argument("--open", action="store_true",
                        help="open it in the default web browser too")


def console_url(http_addr: str, *, tls: bool) -> str:
    host, sep, port = http_addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--http {http_addr!r}: expected host:port")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"  # listening on every address: this machine reaches it on loopback
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}{PATH}"


async def cmd_console(ctx: Context) -> int:
    args = ctx.args
    address = args.http or os.environ.get(HTTP_ADDR_ENV) or DEFAULT_HTTP_ADDR
    url = console_url(address, tls=getattr(args, "ca_file", None) is not None)
    opened = webbrowser.open(url) if args.open else False
    if ctx.out.json_mode:
        ctx.out.json_doc({"url": url, "opened": opened})
    else:
        ctx.out.line(url)
    if args.open and not opened:
        ctx.out.error("no web browser could be opened here: open the URL above yourself")
        return EXIT_FAILED
    return EXIT_OK
