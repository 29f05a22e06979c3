"""`agent-infra` commands for the daemons and the service stack: up, down, status, health,
services start|stop|restart|logs, pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from . import cli_daemons
from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Context,
    UsageError,
    add_command,
    add_command_group,
    non_negative_int,
    parse_since,
    require_file,
)
from .cli_output import PullDisplay, StartDisplay, format_bytes, format_span, to_jsonable
from .env_manager import ENV_MANAGER, EnvManagerClient
from .env_manager_models import ServiceStatus
from .errors import InfraError, InfraUnavailable

__all__ = ["health_summary", "register"]


def register(subparsers: Any) -> None:
    up = add_command(
        subparsers, "up", cmd_up,
        help="start the daemons (when not running) and the service stack",
        description="""
            Start env-manager and the orchestrator on this machine when nothing answers on
            their addresses (detached, in their own session; pid files and logs in the state
            directory; a started orchestrator dispatches to the env-manager address), then
            start the service stack (all services, or those named) with live progress per
            service. Exits 0 when every service is healthy, 1 when one is not, 3 when a daemon
            cannot be reached or started.""",
        examples="""
            agent-infra up --config examples/demo-stack.toml
            agent-infra up --services api web          # those two and their dependencies
            agent-infra up --json | jq -c .            # one JSON line per transition""")
    up.add_argument("--config", metavar="FILE",
                    help="env-manager config (the stack) for a daemon this command starts")
    up.add_argument("--orchestrator-config", metavar="FILE",
                    help="orchestrator config for a daemon this command starts")
    up.add_argument("--services", nargs="+", metavar="NAME", default=[],
                    help="services or profiles to start (default: all)")
    up.add_argument("--sequential", action="store_true",
                    help="start one service at a time, each ready before the next")
    up.add_argument("--no-stack", action="store_true",
                    help="only make sure the daemons run; start no service")
    up.add_argument("--state-dir", metavar="DIR",
                    help="for daemons this command starts: pid files, logs and their data "
                         "(DIR/env-manager, DIR/orchestrator); default: pid files and logs in "
                         "~/.local/state/agent-infra, data where each daemon's config says")

    down = add_command(
        subparsers, "down", cmd_down,
        help="stop the service stack, then the daemons `up` started",
        description="""
            Stop and remove every service of the stack (StopServices), then stop (SIGTERM,
            graceful) the env-manager and orchestrator that `agent-infra up` started, found by
            their pid files. Daemons it did not start are left running.""",
        examples="""
            agent-infra down
            agent-infra down --keep-daemons            # services only
            agent-infra down --grace 2                 # at most 2 s per container""")
    down.add_argument("--grace", type=non_negative_int, default=0, metavar="SECONDS",
                      help="seconds each container gets to stop (default: its stop_grace)")
    down.add_argument("--keep-daemons", action="store_true",
                      help="stop the services only; leave the daemons running")
    down.add_argument("--state-dir", metavar="DIR",
                      help="where `up` left its pid files (default: ~/.local/state/agent-infra)")

    add_command(
        subparsers, "status", cmd_status,
        help="services (state, health, ports, CPU/memory) and the task queue per class",
        examples="""
            agent-infra status
            agent-infra status --json | jq '.services.api.status'
            agent-infra status | grep unhealthy""")

    add_command(
        subparsers, "health", cmd_health,
        help="health of env-manager, the orchestrator and what it depends on",
        description="""
            Ask both daemons for their health. Exits 0 when everything serves, 1 when
            something answers but is not healthy, 3 when a daemon cannot be reached.""",
        examples="""
            agent-infra health
            agent-infra --orchestrator 10.0.0.5:50052 health --json""")

    commands = add_command_group(
        subparsers, "services", help="start, stop, restart services or show their logs",
        description="Control individual services of the stack.",
        examples="""
            agent-infra services start api
            agent-infra services logs -f api""")
    start = add_command(
        commands, "start", cmd_services_start,
        help="start services (default: all) and their dependencies, with progress",
        examples="""
            agent-infra services start                  # the whole stack
            agent-infra services start api --override api.env.DEBUG=1
            agent-infra services start db --sequential""")
    start.add_argument("names", nargs="*", metavar="NAME", help="services or profiles")
    start.add_argument("--sequential", action="store_true",
                       help="one service at a time, each ready before the next")
    start.add_argument("--override", action="append", metavar="KEY=VALUE", default=[],
                       help="per-call change, e.g. api.image=IMG, api.env.KEY=V (repeatable)")

    stop = add_command(
        commands, "stop", cmd_services_stop,
        help="stop and remove services and what depends on them",
        examples="""
            agent-infra services stop web worker
            agent-infra services stop --all --grace 2""")
    stop.add_argument("names", nargs="*", metavar="NAME")
    stop.add_argument("--all", action="store_true", help="stop every service")
    stop.add_argument("--grace", type=non_negative_int, default=0, metavar="SECONDS",
                      help="seconds each container gets to stop (default: its stop_grace)")

    restart = add_command(
        commands, "restart", cmd_services_restart,
        help="restart services one after another, waiting for each to be healthy",
        examples="""
            agent-infra services restart api
            agent-infra services restart cache api --json""")
    restart.add_argument("names", nargs="+", metavar="NAME")
    restart.add_argument("--grace", type=non_negative_int, default=0, metavar="SECONDS")

    logs = add_command(
        commands, "logs", cmd_services_logs,
        help="a service's container log (several services: lines prefixed by name)",
        examples="""
            agent-infra services logs api
            agent-infra services logs -f --tail 20 api worker
            agent-infra services logs --since 10m db --json""")
    logs.add_argument("names", nargs="+", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=non_negative_int, default=0, metavar="N",
                      help="only the last N lines (default: all)")
    logs.add_argument("--since", metavar="TIME",
                      help="only lines since TIME: unix seconds, ISO datetime or 10m / 2h ago")

    pull = add_command(
        subparsers, "pull", cmd_pull,
        help="pull images (default: every image the stack and task classes use)",
        examples="""
            agent-infra pull
            agent-infra pull redis:7-alpine postgres:16-alpine""")
    pull.add_argument("images", nargs="*", metavar="IMAGE")


# --- up / down ----------------------------------------------------------------------------------


async def cmd_up(ctx: Context) -> int:
    from .infra import AgentInfra

    args = ctx.args
    require_file(args.config, "--config")
    require_file(args.orchestrator_config, "--orchestrator-config")
    starter = AgentInfra.start(
        orchestrator_address=args.orchestrator, env_manager_address=args.env_manager,
        config=ctx.config, auto_start=True, env_manager_config=args.config,
        orchestrator_config=args.orchestrator_config,
        data_dir=cli_daemons.state_dir(args.state_dir) if args.state_dir else None)
    infra = starter.infra
    addresses = {"env-manager": infra.env.address,
                 "orchestrator": infra.orchestrator.address}
    spinner = (ctx.out.err_console.status("starting the daemons ...")
               if ctx.out.err_console.is_terminal and not ctx.out.json_mode
               else contextlib.nullcontext())
    with spinner:
        started = {daemon.name: daemon for daemon in await starter.start()}
    for name, address in addresses.items():
        daemon = started.get(name)
        if daemon is not None:
            ctx.out.note(f"{name} started on {address} (pid {daemon.pid}, log "
                         f"{daemon.log_path})")
            continue
        ctx.out.note(f"{name} already answers on {address}")
        config_file = args.config if name == "env-manager" else args.orchestrator_config
        if config_file:
            ctx.out.note(f"  {config_file} was not applied: the running daemon keeps its own "
                         f"config (SIGHUP makes it re-read its config file)")
    if args.no_stack:
        return EXIT_OK
    async with ctx.env_manager() as em:
        return await _start_services(ctx, em, args.services, parallel=not args.sequential,
                                     overrides={})


async def _start_services(ctx: Context, em: EnvManagerClient, names: list[str], *,
                          parallel: bool, overrides: dict[str, str]) -> int:
    title = "starting " + (", ".join(names) if names else "all services")
    with StartDisplay(ctx.out, title) as display:
        async for update in em.start_services(names, parallel=parallel, overrides=overrides):
            display.update(update)
    if not display.states:
        ctx.out.note("no services configured")
        return EXIT_OK
    if display.failed:
        ctx.out.error("not healthy: " + ", ".join(
            f"{name} ({display.states[name].status}: {display.states[name].message})"
            for name in display.failed))
        return EXIT_FAILED
    if not ctx.out.json_mode:
        ctx.out.note(f"{len(display.states)} services healthy")
    return EXIT_OK


async def cmd_down(ctx: Context) -> int:
    from . import _launcher

    args = ctx.args
    report: dict[str, Any] = {"services": None, "daemons": []}
    code = EXIT_OK
    client = ctx.env_manager()
    config = ctx.config
    # A quick look first: when nothing listens there, say so at once instead of waiting out
    # the connect timeout.
    answering = await _launcher.probe(client.address, config, ENV_MANAGER,
                                      timeout=config.connect_timeout) is not None
    try:
        if not answering:
            raise InfraUnavailable(f"env-manager is not running at {client.address}",
                                   address=client.address)
        async with client as em:
            result = await em.stop_services(timeout_seconds=args.grace)
        report["services"] = result.service_results
        if not ctx.out.json_mode:
            for name, outcome in sorted(result.service_results.items()):
                ctx.out.line(f"{name:<16} {outcome}")
        if not result.success:
            code = EXIT_FAILED
    except InfraUnavailable as exc:
        report["error"] = exc.details
        ctx.out.note(f"services not stopped: {exc.details}")
        code = EXIT_UNAVAILABLE
    if not args.keep_daemons:
        directory = cli_daemons.state_dir(args.state_dir)
        for name in ("orchestrator", "env-manager"):  # the dispatcher first
            daemon = cli_daemons.recorded_daemon(name, directory)
            if daemon is None:
                continue
            await daemon.stop()
            how = "stopped" if not daemon.alive() else "still running"
            report["daemons"].append({"name": name, "pid": daemon.pid, "result": how,
                                      "log": str(daemon.log_path)})
            if not ctx.out.json_mode:
                ctx.out.line(f"{name:<16} daemon {how} (pid {daemon.pid})")
        if code == EXIT_UNAVAILABLE and report["daemons"]:
            code = EXIT_OK  # env-manager did not answer, but what `up` started is gone now
    if ctx.out.json_mode:
        ctx.out.json_doc(report)
    return code


# --- status / health ------------------------------------------------------------------------------


def health_summary(status: ServiceStatus) -> str:
    """One word for a service's last health result: healthy, unhealthy, starting or -."""
    checks = status.health_checks
    if "healthy" in checks:
        return "healthy" if checks["healthy"] == "true" else "unhealthy"
    if "docker" in checks:
        return checks["docker"]
    return "-"


def _uptime(started_at: int) -> str:
    return format_span(max(0, int(time.time()) - started_at)) if started_at else "-"


QUEUE_FIGURES = ("queue_depth", "running", "completed", "failed", "cancelled")


async def _queues(ctx: Context) -> dict[str, dict[str, int]]:
    async with ctx.orchestrator() as orch:
        metrics = await orch.get_metrics([f"{name}.*" for name in QUEUE_FIGURES])
    classes: dict[str, dict[str, int]] = {}
    for key, value in metrics.metrics.items():
        family, _, cls = key.partition(".")
        if family in QUEUE_FIGURES and cls:
            label = "pending" if family == "queue_depth" else family
            classes.setdefault(cls, dict.fromkeys(
                ("pending", "running", "completed", "failed", "cancelled"), 0))[label] = int(value)
    return dict(sorted(classes.items()))


async def _services(ctx: Context) -> dict[str, ServiceStatus]:
    async with ctx.env_manager() as em:
        return await em.get_services_status()


async def cmd_status(ctx: Context) -> int:
    services, queues = await asyncio.gather(_services(ctx), _queues(ctx),
                                            return_exceptions=True)
    errors: dict[str, str] = {}
    code = EXIT_OK
    for part, value in (("env-manager", services), ("orchestrator", queues)):
        if isinstance(value, BaseException):
            if not isinstance(value, InfraError):
                raise value
            errors[part] = str(value) if not isinstance(value, InfraUnavailable) \
                else value.details
            code = max(code, EXIT_UNAVAILABLE if isinstance(value, InfraUnavailable)
                       else EXIT_FAILED)
    out = ctx.out
    if out.json_mode:
        doc: dict[str, Any] = {
            "services": None if isinstance(services, BaseException) else {
                name: {**_status_dict(status), "health": health_summary(status)}
                for name, status in sorted(services.items())},
            "queues": None if isinstance(queues, BaseException) else queues,
        }
        if errors:
            doc["errors"] = errors
        out.json_doc(doc)
        return code
    if not isinstance(services, BaseException):
        rows = []
        for name, status in sorted(services.items()):
            usage = status.resource_usage
            rows.append([
                name, status.status, health_summary(status),
                ",".join(map(str, status.ports)) or "-",
                f"{usage.cpu_percent:.1f}%" if usage else "-",
                format_bytes(usage.memory_bytes) if usage else "-",
                _uptime(status.started_at) if status.status != "stopped" else "-",
                status.container_id[:12] or "-",
            ])
        out.table(["service", "state", "health", "ports", "cpu", "memory", "uptime",
                   "container"], rows, title="services" if out.rich else None, state_column=1,
                  empty="no services configured")
    if not isinstance(queues, BaseException):
        if not isinstance(services, BaseException):
            out.line()
        out.table(["class", "pending", "running", "completed", "failed", "cancelled"],
                  [[cls, *(figures[k] for k in ("pending", "running", "completed", "failed",
                                                  "cancelled"))]
                   for cls, figures in queues.items()],
                  title="task queues" if out.rich else None, empty="no task classes")
    for part, message in errors.items():
        out.error(f"{part}: {message}")
    return code


def _status_dict(status: ServiceStatus) -> dict[str, Any]:
    value: dict[str, Any] = to_jsonable(status)
    return value


async def cmd_health(ctx: Context) -> int:
    from . import _launcher

    config = ctx.config
    em_address = ctx.env_manager().address

    async def env_manager_part() -> dict[str, Any]:
        # grpc.health.v1: NOT_SERVING while env-manager cannot reach the Docker engine.
        state = await _launcher.probe(em_address, config, ENV_MANAGER,
                                      timeout=config.connect_timeout)
        if state is None:
            return {"address": em_address, "reachable": False, "healthy": False,
                    "status": "UNREACHABLE",
                    "error": f"could not connect to env-manager at {em_address}"}
        return {"address": em_address, "reachable": True, "healthy": state == "SERVING",
                "status": state}

    async def orchestrator_part() -> dict[str, Any]:
        client = ctx.orchestrator()
        try:
            async with client as orch:
                health = await orch.health()
        except InfraUnavailable as exc:
            return {"address": client.address, "reachable": False, "healthy": False,
                    "error": exc.details}
        return {"address": client.address, "reachable": True, "healthy": health.healthy,
                "version": health.version, "services": health.services}

    em_part, orch_part = await asyncio.gather(env_manager_part(), orchestrator_part())
    healthy = em_part["healthy"] and orch_part["healthy"]
    reachable = em_part["reachable"] and orch_part["reachable"]
    if ctx.out.json_mode:
        ctx.out.json_doc({"healthy": healthy, "env_manager": em_part,
                          "orchestrator": orch_part})
    else:
        rows: list[list[object]] = [[
            "env-manager", em_part["address"], em_part["status"],
            em_part.get("error", "")]]
        if orch_part["reachable"]:
            rows.append(["orchestrator", orch_part["address"],
                         "SERVING" if orch_part["healthy"] else "NOT_SERVING",
                         f"version {orch_part['version']}"])
            for dependency, state in sorted(orch_part["services"].items()):
                word, _, detail = state.partition(":")
                rows.append([f"  {dependency}", "", word.strip(), detail.strip()])
        else:
            rows.append(["orchestrator", orch_part["address"], "UNREACHABLE",
                         orch_part["error"]])
        ctx.out.table(["component", "address", "status", "detail"], rows, state_column=2)
    if not reachable:
        return EXIT_UNAVAILABLE
    return EXIT_OK if healthy else EXIT_FAILED


# --- services start|stop|restart|logs, pull -------------------------------------------------------


async def cmd_services_start(ctx: Context) -> int:
    # Override values are strings on the wire (a command may be a JSON list): kept as typed.
    overrides: dict[str, str] = {}
    for item in ctx.args.override:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--override {item!r}: expected SERVICE.KEY=VALUE")
        overrides[key.strip()] = value
    async with ctx.env_manager() as em:
        return await _start_services(ctx, em, ctx.args.names, parallel=not ctx.args.sequential,
                                     overrides=overrides)


async def cmd_services_stop(ctx: Context) -> int:
    args = ctx.args
    if not args.names and not args.all:
        raise UsageError("name the services to stop, or pass --all")
    if args.names and args.all:
        raise UsageError("--all stops every service: name none with it")
    async with ctx.env_manager() as em:
        result = await em.stop_services(args.names, timeout_seconds=args.grace)
    if ctx.out.json_mode:
        ctx.out.json_doc(result)
    else:
        ctx.out.table(["service", "result"], sorted(result.service_results.items()),
                      state_column=1, empty="nothing to stop")
    return EXIT_OK if result.success else EXIT_FAILED


async def cmd_services_restart(ctx: Context) -> int:
    args = ctx.args
    code = EXIT_OK
    results: dict[str, Any] = {}
    async with ctx.env_manager() as em:
        for name in args.names:
            began = time.monotonic()
            if ctx.out.rich:
                with ctx.out.console.status(f"restarting {name} ..."):
                    result = await em.restart_service(name, timeout_seconds=args.grace)
            else:
                result = await em.restart_service(name, timeout_seconds=args.grace)
            took = time.monotonic() - began
            results[name] = {"success": result.success, "message": result.message,
                             "seconds": round(took, 3)}
            if not result.success:
                code = EXIT_FAILED
            if not ctx.out.json_mode:
                word = "restarted" if result.success else "failed"
                ctx.out.line(f"{name:<16} {word:<9} {took:5.1f}s  {result.message}".rstrip())
    if ctx.out.json_mode:
        ctx.out.json_doc(results)
    return code


async def cmd_services_logs(ctx: Context) -> int:
    args = ctx.args
    since = parse_since(args.since) if args.since else 0.0
    prefix = len(args.names) > 1
    width = max(len(name) for name in args.names)
    lock = asyncio.Lock()

    async def one(em: EnvManagerClient, name: str) -> None:
        stream: AsyncIterator[Any] = em.stream_logs(name, follow=args.follow, tail=args.tail,
                                                    since=since)
        async for entry in stream:
            async with lock:
                if ctx.out.json_mode:
                    ctx.out.json_line(entry)
                else:
                    text = entry.message.rstrip("\n")
                    ctx.out.line(f"{name:<{width}} | {text}" if prefix else text)

    async with ctx.env_manager() as em:
        await asyncio.gather(*(one(em, name) for name in args.names))
    return EXIT_OK


async def cmd_pull(ctx: Context) -> int:
    async with ctx.env_manager() as em:
        with PullDisplay(ctx.out) as display:
            async for item in em.pull_images(ctx.args.images):
                display.update(item)
    if not display.last:
        ctx.out.note("no images to pull")
        return EXIT_OK
    for name in display.failed:
        ctx.out.error(f"{name}: {display.last[name].message or display.last[name].status}")
    if not ctx.out.json_mode and not display.failed:
        ctx.out.note(f"{len(display.last)} images pulled")
    return EXIT_FAILED if display.failed else EXIT_OK

