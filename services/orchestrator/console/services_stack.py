"""The env-manager stack as the console shows it, through the orchestrator's own endpoints.

`ServicesStack` uses the clients the orchestrator dispatches with (the same channels, TLS and
token: `EnvManagerExecutor.clients`), one per configured endpoint, addressed by its index in
`[orchestrator] env_managers`. It reads each endpoint's services (GetServicesStatus: state,
health, ports, CPU and memory), follows a service's log (StreamLogs), and starts, stops and
restarts a service (StartServices, StopServices, RestartService).

An endpoint that does not answer is an `EndpointView` in state "unavailable" with the reason,
never an exception; an action on one is `Unavailable` (HTTP 503). What env-manager refuses
keeps its meaning (an unknown service is NotFound, 404). Every call has a deadline, every
text from env-manager is shortened before it is shown.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from agent_infra.client import EnvManagerClient
from agent_infra.client.env_manager_models import ServiceStatus
from agent_infra.client.errors import InfraError
from agent_infra.runtime.errors import (
    InvalidArgument,
    NotFound,
    shorten,
    shown,
)

from ..executors.env_manager import EnvManagerExecutor, env_manager_error
from ..executors.protocol import Executor
from ..executors.routing import RoutingExecutor
from ..model import DEFAULT_CLASS

# env-manager's rule for a service name (registry.NAME_PATTERN): checked here so a bad one is
# refused naming the field before any call.
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# GetServicesStatus samples live container stats: allow it a few seconds per endpoint.
STATUS_TIMEOUT = 10.0
# Stop and restart wait for the container's grace and health; the page waits this long.
ACTION_TIMEOUT = 40.0
# StartServices streams until healthy; after this the page answers "starting" (the start goes
# on on the server: env-manager finishes it when the caller stops reading).
START_WAIT = 30.0
MAX_LINE_CHARS = 2000
MAX_TEXT_CHARS = 300
DEFAULT_TAIL = 100
MAX_TAIL = 500



@dataclass(frozen=True)
class ServiceView:
    name: str
    state: str  # running, stopped, starting, unhealthy
    health: str  # healthy, unhealthy, starting, "no check", or "" when stopped
    health_detail: str  # the last probe's message and details, shortened
    ports: tuple[int, ...]
    cpu_percent: float | None  # None when not running
    memory_bytes: int | None
    container_id: str  # short form, "" when there is no container
    started_at: int  # unix seconds, 0 when not running


@dataclass(frozen=True)
class EndpointView:
    index: int
    address: str
    state: str  # "available" or "unavailable"
    error: str  # why it is unavailable
    services: tuple[ServiceView, ...]  # by name


@dataclass(frozen=True)
class LogLine:
    stream: str  # stdout or stderr
    message: str  # shortened to MAX_LINE_CHARS
    timestamp: int


@dataclass(frozen=True)
class ActionResult:
    success: bool
    message: str


class ServicesStack:
    def __init__(self, clients: Sequence[EnvManagerClient]) -> None:
        self._clients = tuple(clients)

    @classmethod
    def of(cls, executor: Executor) -> ServicesStack:
        """The daemon's env-manager clients (none with an executor that has no env-manager)."""
        if isinstance(executor, RoutingExecutor):
            executor = executor.owner(DEFAULT_CLASS)
        clients = executor.clients if isinstance(executor, EnvManagerExecutor) else ()
        return cls(clients)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(client.address for client in self._clients)

    async def status(self) -> list[EndpointView]:
        """Every endpoint's services, asked at once; an endpoint that fails is "unavailable"."""
        return list(await asyncio.gather(*(self._status(index)
                                           for index in range(len(self._clients)))))

    async def _status(self, index: int) -> EndpointView:
        client = self._clients[index]
        try:
            found = await client.get_services_status(timeout=STATUS_TIMEOUT)
        except InfraError as exc:
            return EndpointView(index, client.address, "unavailable",
                                shorten(f"{exc.code}: {exc.details}", MAX_TEXT_CHARS), ())
        except (OSError, TimeoutError) as exc:
            return EndpointView(index, client.address, "unavailable",
                                shorten(f"{type(exc).__name__}: {exc}", MAX_TEXT_CHARS), ())
        services = tuple(service_view(found[name]) for name in sorted(found))
        return EndpointView(index, client.address, "available", "", services)

    def client(self, index: int) -> EnvManagerClient:
        if not 0 <= index < len(self._clients):
            raise NotFound(f"endpoint {index} not found: the orchestrator has "
                           f"{len(self._clients)} env-manager endpoint(s), 0-based")
        return self._clients[index]

    async def start(self, index: int, name: str) -> ActionResult:
        client = self.client(index)
        check_name(name)
        last: dict[str, str] = {}
        try:
            async with asyncio.timeout(START_WAIT):
                async for update in client.start_services([name]):
                    last[update.service_name] = f"{update.status} {update.message}".strip()
        except TimeoutError:
            return ActionResult(True, f"{name}: still starting after {START_WAIT:.0f} s "
                                      "(env-manager carries on)")
        except InfraError as exc:
            raise env_manager_error(exc) from None
        state = last.get(name, "")
        ok = state.startswith(("healthy", "running"))
        summary = "; ".join(f"{key}: {value}" for key, value in sorted(last.items()))
        return ActionResult(ok, shorten(summary or f"{name}: started", MAX_TEXT_CHARS))

    async def stop(self, index: int, name: str) -> ActionResult:
        client = self.client(index)
        check_name(name)
        try:
            result = await client.stop_services([name], timeout=ACTION_TIMEOUT)
        except InfraError as exc:
            raise env_manager_error(exc) from None
        summary = "; ".join(f"{key}: {value}"
                            for key, value in sorted(result.service_results.items()))
        return ActionResult(result.success, shorten(summary or f"{name}: stopped",
                                                    MAX_TEXT_CHARS))

    async def restart(self, index: int, name: str) -> ActionResult:
        client = self.client(index)
        check_name(name)
        try:
            result = await client.restart_service(name, timeout=ACTION_TIMEOUT)
        except InfraError as exc:
            raise env_manager_error(exc) from None
        return ActionResult(result.success, shorten(result.message or f"{name}: restarted",
                                                    MAX_TEXT_CHARS))

    async def follow_logs(self, index: int, name: str, *, tail: int = DEFAULT_TAIL,
                          since: int = 0) -> AsyncIterator[LogLine]:
        """The last `tail` lines (at most MAX_TAIL), then each new one until the container
        stops (or the caller stops reading). NotFound: no such service or no container."""
        client = self.client(index)
        check_name(name)
        stream = client.stream_logs(name, follow=True, tail=max(1, min(tail, MAX_TAIL)),
                                    since=max(since, 0))
        try:
            async for entry in stream:
                yield LogLine(entry.stream, shorten(entry.message.rstrip("\n"), MAX_LINE_CHARS),
                              entry.timestamp)
        except InfraError as exc:
            raise env_manager_error(exc) from None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()


def check_name(name: str) -> None:
    if not SERVICE_NAME.fullmatch(name):
        raise InvalidArgument(f"service {shown(name, 80)} is invalid: a service name is "
                              "lower-case letters, digits, '-', '_' or '.', starting with a "
                              "letter or digit (at most 63)")


def service_view(status: ServiceStatus) -> ServiceView:
    checks = status.health_checks
    if status.status == "stopped":
        health = ""
    elif "healthy" in checks:
        health = "healthy" if checks["healthy"] == "true" else "unhealthy"
    elif checks.get("docker"):
        health = checks["docker"]
    elif status.status in ("starting", "unhealthy"):
        health = status.status
    else:
        health = "no check"
    detail = "; ".join(f"{key}: {value}" for key, value in sorted(checks.items())
                       if key != "healthy" and value)
    usage = status.resource_usage
    return ServiceView(
        name=status.name, state=status.status, health=health,
        health_detail=shorten(detail, MAX_TEXT_CHARS), ports=tuple(status.ports),
        cpu_percent=None if usage is None else round(usage.cpu_percent, 1),
        memory_bytes=None if usage is None else usage.memory_bytes,
        container_id=status.container_id[:12], started_at=status.started_at)
