"""`AgentInfra`: the high-level entry point, with the original client's API kept.

    from agent_infra.client import AgentInfra

    async with AgentInfra.start() as infra:              # connect (ORCHESTRATOR_GRPC_ADDR ...)
        print(await infra.health_check())                # {"healthy": True, "version": ...}
        final = await infra.run_task("t-1", {"command": ["echo", "hi"]}, timeout=60)

    infra = await AgentInfra.start()                     # the same, closed with infra.close()

    asyncio.run(AgentInfra.start().start())              # bring the daemons up and leave them

``AgentInfra.start(...)`` returns an `InfraStarter`, which is all three: an async context manager
(connects on entry; closes, and stops the daemons it auto-started, on exit), awaitable (gives
the connected `AgentInfra`), and the owner of a ``start()`` coroutine that brings the
infrastructure up *detached*, like ``agent-infra up``: env-manager and the orchestrator are
started as background processes in their own session when nothing answers on their addresses,
it waits until they serve, and returns the daemons it started, leaving them running.

auto_start (for the context manager and ``await``): a daemon that does not answer on its
address is started as a local subprocess (``python -m agent_infra.env_manager`` /
``agent_infra.orchestrator``, with the given configs), and stopped with SIGTERM, gracefully, when
the `AgentInfra` closes; a daemon that was already running is never started or stopped. Only
loopback addresses can be auto-started. Logs and pid files go to ``data_dir`` (default
``~/.local/state/agent-infra``): ``env-manager.log``, ``orchestrator.log``, ``*.pid``.

The original stack's API (``dspy_agent.infra``) works unchanged next to ours:
``AgentInfra(orchestrator_addr=None, workspace=None, auto_start_services=None, cli_path=None)``
(positionally too), ``AgentInfra.start(...)`` / ``AgentInfra.start_context(...)`` with the same
keywords, ``await infra.start_async()`` / ``await infra.start()`` on an instance, ``stop()``,
and the attributes ``orchestrator_addr``, ``workspace``, ``auto_start_services``, ``cli_path``.
Where the two name the same thing (``orchestrator_addr``/``orchestrator_address``,
``auto_start_services``/``auto_start``) either is accepted; both with different values is a
TypeError. Differences, on purpose:

- ``auto_start_services`` means what its name says here: start the local daemons that do not
  answer. Neither keyword given: no auto-start (the original tried to launch its ``dspy-agent``
  binary whenever the first connect failed, but that connect had no timeout). Setting
  DSPY_AGENT_SKIP_START (1/true/yes/on) refuses auto-start even when asked, as the original did.
- ``workspace`` and ``cli_path`` (DSPY_AGENT_CLI_PATH) located and ran the original's launcher
  binary. The daemons here are started from this package (``python -m agent_infra.*``), so both
  are kept on the instance for callers that read them and not used otherwise.
- DSPY_AGENT_SERVICE_TIMEOUT (seconds, default 60) is the default ``start_timeout``: how long an
  auto-started daemon gets to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, overload

from . import _launcher
from ._launcher import LocalDaemon
from ._transport import ConnectionConfig, ServiceTarget
from .env_manager import ENV_MANAGER, EnvManagerClient
from .errors import InfraError, InfraUnavailable
from .orchestrator import ORCHESTRATOR, OrchestratorClient
from .orchestrator_models import (
    CancelResult,
    RunStarted,
    SystemEvent,
    TaskResult,
    TaskStatus,
    WorkflowCreated,
    WorkflowStatus,
)
from .sandbox import Sandbox

__all__ = ["AgentInfra", "InfraStarter", "LocalDaemon"]

#: Deadline of the Health call behind health_check().
HEALTH_TIMEOUT = 10.0
#: How long auto_start waits for a daemon it started to report SERVING (unless
#: DSPY_AGENT_SERVICE_TIMEOUT says otherwise).
START_TIMEOUT = 60.0
#: The original stack's environment variables, honoured here.
SKIP_START_ENV = "DSPY_AGENT_SKIP_START"
SERVICE_TIMEOUT_ENV = "DSPY_AGENT_SERVICE_TIMEOUT"
CLI_PATH_ENV = "DSPY_AGENT_CLI_PATH"
_TRUE = frozenset({"1", "true", "yes", "on"})
_HTTP = {
    # name: (default gRPC address, default HTTP address, env variable the daemon reads)
    "env-manager": ("127.0.0.1:50100", "127.0.0.1:50101", "ENV_MANAGER_METRICS_ADDR"),
    "orchestrator": ("127.0.0.1:50052", "127.0.0.1:9097", "ORCHESTRATOR_HTTP_ADDR"),
}


class AgentInfra:
    """Both daemons behind one object: the orchestrator's tasks, workflows and events, and
    env-manager's service stack (`env`).

    Args:
        orchestrator_address: ``host:port``; default ``config.address``, else
            ORCHESTRATOR_GRPC_ADDR (read now), else ``127.0.0.1:50052``.
        env_manager_address: ``host:port``; default ENV_MANAGER_GRPC_ADDR (read now), else
            ``127.0.0.1:50100``.
        config: TLS, token, deadlines, shared by both connections (its ``address`` counts
            as the orchestrator's only).
        auto_start: start local daemons that do not answer (see the module docstring).
        env_manager_config, orchestrator_config: TOML files for daemons started here.
            Without an orchestrator config, a started orchestrator dispatches to
            `env_manager_address` (unless ORCHESTRATOR_ENV_MANAGERS says otherwise).
        data_dir: for started daemons: their data (``env-manager/``, ``orchestrator/``), logs
            and pid files. Default: logs and pids in ``~/.local/state/agent-infra``, data
            where each daemon's config puts it.
        connect_timeout: seconds to wait for a connection (default: the config's, 5 s).
        start_timeout: seconds a started daemon gets to report SERVING.

    Nothing is dialled until `connect()` (or ``async with`` / ``await`` of `start`) or the
    first call. Always `close()` what you connected.
    """

    def __init__(self, orchestrator_addr: str | None = None,
                 workspace: str | Path | None = None, auto_start_services: bool | None = None,
                 cli_path: str | Path | None = None, *,
                 orchestrator_address: str | None = None,
                 env_manager_address: str | None = None,
                 config: ConnectionConfig | None = None, auto_start: bool | None = None,
                 env_manager_config: str | Path | None = None,
                 orchestrator_config: str | Path | None = None,
                 data_dir: str | Path | None = None, connect_timeout: float | None = None,
                 start_timeout: float | None = None) -> None:
        orchestrator_address = _one_of("orchestrator_addr", orchestrator_addr,
                                       "orchestrator_address", orchestrator_address)
        wanted = _one_of("auto_start_services", auto_start_services, "auto_start", auto_start)
        self._skip_start = os.environ.get(SKIP_START_ENV, "").strip().lower() in _TRUE
        auto_start = bool(wanted) and not self._skip_start
        #: The original's attributes (see the module docstring).
        self.workspace = Path(workspace) if workspace is not None else Path.cwd()
        self.auto_start_services = auto_start
        explicit_cli = cli_path if cli_path is not None else os.environ.get(CLI_PATH_ENV)
        self.cli_path = Path(explicit_cli) if explicit_cli else None
        if start_timeout is None:
            start_timeout = _env_seconds(SERVICE_TIMEOUT_ENV, START_TIMEOUT)
        base = config or ConnectionConfig()
        if connect_timeout is not None:
            base = replace(base, connect_timeout=connect_timeout)
        orchestrator_address = orchestrator_address or base.address
        base = replace(base, address=None)
        self._config = base
        self._orchestrator = OrchestratorClient(orchestrator_address, config=base)
        self._env = EnvManagerClient(env_manager_address, config=base)
        self._auto_start = auto_start
        self._env_manager_config = _absolute(env_manager_config)
        self._orchestrator_config = _absolute(orchestrator_config)
        self._data_dir = _absolute(data_dir)
        self._start_timeout = start_timeout
        self._started: list[LocalDaemon] = []

    class _Start:
        """``AgentInfra.start(...)`` makes an instance; ``infra.start()`` (the original's
        instance method) uses that instance. Both give an `InfraStarter`."""

        @overload
        def __get__(self, instance: None, owner: type[AgentInfra]
                    ) -> _StartFactory: ...

        @overload
        def __get__(self, instance: AgentInfra, owner: type[AgentInfra] | None = None
                    ) -> _StartFactory: ...

        def __get__(self, instance: AgentInfra | None,
                    owner: type[AgentInfra] | None = None) -> _StartFactory:
            if instance is None:
                assert owner is not None
                return _StartFactory(owner, None)
            return _StartFactory(type(instance), instance)

    #: ``AgentInfra.start(**kwargs)``: an `InfraStarter` for a new instance made with these
    #: arguments (as for `AgentInfra`): ``async with`` it, ``await`` it, or run its
    #: ``start()`` to bring the daemons up detached. On an instance, ``infra.start()`` (no
    #: arguments) is the same for that instance, so ``await infra.start()`` connects it.
    start = _Start()

    @classmethod
    def start_context(cls, *args: Any, **kwargs: Any) -> InfraStarter:
        """The original's name for ``AgentInfra.start(...)`` as an async context manager."""
        return InfraStarter(cls(*args, **kwargs))

    @property
    def orchestrator_addr(self) -> str:
        """The orchestrator's address (the original's attribute)."""
        return self._orchestrator.address

    async def start_async(self) -> Self:
        """The original's way to connect: the same as `connect()`."""
        return await self.connect()

    async def stop(self) -> None:
        """The original's way to close: the same as `close()`."""
        await self.close()

    # -- connections and daemons ------------------------------------------------------------------

    @property
    def orchestrator(self) -> OrchestratorClient:
        """The orchestrator client: every orchestrator RPC, typed."""
        return self._orchestrator

    @property
    def env(self) -> EnvManagerClient:
        """The env-manager client: the service stack (start, stop, status, logs), images."""
        return self._env

    @property
    def started_daemons(self) -> tuple[LocalDaemon, ...]:
        """The daemons this object auto-started and will stop when it closes."""
        return tuple(self._started)

    async def connect(self) -> Self:
        """Connect to the orchestrator, auto-starting local daemons first if allowed.

        Raises InfraUnavailable naming the address when the orchestrator cannot be reached
        within the connect timeout (or a daemon could not be started: with its log's tail).
        """
        if self._auto_start:
            self._started.extend(await self._bring_up(detached=False))
        try:
            await self._orchestrator.connect()
        except InfraUnavailable as exc:
            await self.close()
            if self._skip_start:
                raise InfraUnavailable(
                    f"{exc}; auto-start is disabled by {SKIP_START_ENV}",
                    address=self._orchestrator.address) from exc
            raise
        except BaseException:
            await self.close()
            raise
        return self

    async def up(self) -> list[LocalDaemon]:
        """Start, detached, each daemon that does not answer, and wait until they serve.

        Returns the daemons started (empty when both were running); they keep running after
        this returns, and after the process exits. Connections made here are closed.
        """
        try:
            return await self._bring_up(detached=True)
        finally:
            await self._close_clients()

    async def close(self) -> None:
        """Close both connections and stop (SIGTERM, graceful) the daemons auto-started here.

        Daemons that were already running, or started detached, are left alone. Safe to call
        twice.
        """
        await self._close_clients()
        started, self._started = self._started, []
        # The orchestrator first: it dispatches to env-manager, not the other way round.
        for daemon in sorted(started, key=lambda d: d.name != "orchestrator"):
            await daemon.stop()

    def _take_started(self) -> list[LocalDaemon]:
        """Hand the auto-started daemons over to a new owner (the shared instance's registry)."""
        started, self._started = self._started, []
        return started

    async def _close_clients(self) -> None:
        await asyncio.gather(self._orchestrator.close(), self._env.close())

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _bring_up(self, *, detached: bool) -> list[LocalDaemon]:
        probe_timeout = min(1.0, self._config.connect_timeout)
        targets: list[tuple[str, str, ServiceTarget]] = [
            ("env-manager", self._env.address, ENV_MANAGER),
            ("orchestrator", self._orchestrator.address, ORCHESTRATOR)]
        states = await asyncio.gather(*(
            _launcher.probe(address, self._config, target, probe_timeout)
            for _, address, target in targets))
        missing = [(name, address, target)
                   for (name, address, target), state in zip(targets, states, strict=True)
                   if state is None]
        for name, address, _ in missing:
            if not _launcher.is_loopback(address):
                raise InfraUnavailable(
                    f"{name} does not answer at {address}, and only a daemon on this machine "
                    f"(a loopback host:port) can be started automatically", address=address)
        started = [self._spawn(name, address, detached) for name, address, _ in missing]
        results = await asyncio.gather(*(
            _launcher.wait_serving(daemon, self._config, target, self._start_timeout)
            for daemon, (_, _, target) in zip(started, missing, strict=True)),
            return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for daemon in started:
                await daemon.stop()
            raise failures[0]
        return started

    def _spawn(self, name: str, address: str, detached: bool) -> LocalDaemon:
        default_grpc, default_http, http_env = _HTTP[name]
        http_address = _launcher.http_address_for(address, default_grpc, default_http, http_env)
        args: list[str] = []
        if name == "env-manager":
            if self._env_manager_config is not None:
                args += ["--config", str(self._env_manager_config)]
            if self._data_dir is not None:
                args += ["--state-dir", str(self._data_dir / "env-manager")]
        else:
            if self._orchestrator_config is not None:
                args += ["--config", str(self._orchestrator_config)]
            elif not os.environ.get("ORCHESTRATOR_ENV_MANAGERS"):
                args += ["--env-managers", self._env.address]
            if self._data_dir is not None:
                args += ["--data-dir", str(self._data_dir / "orchestrator")]
        state_dir = self._data_dir or _launcher.default_state_dir()
        return _launcher.spawn(name, address, http_address, args, state_dir, detached=detached)

    # -- the original API ---------------------------------------------------------------------

    async def health_check(self) -> dict[str, Any]:
        """``{"healthy": bool, "version": str, "services": {name: status}}``.

        Never raises because something is down: an unreachable orchestrator gives
        ``healthy: False`` with ``"error"`` saying why, within the connect timeout; so does an
        orchestrator whose dependencies (store, env-manager) are not serving.
        """
        try:
            status = await self._orchestrator.health(timeout=HEALTH_TIMEOUT)
        except InfraError as exc:
            return {"healthy": False, "version": "", "services": {}, "error": str(exc)}
        report: dict[str, Any] = {"healthy": status.healthy, "version": status.version,
                                  "services": dict(status.services)}
        if not status.healthy:
            failing = [f"{name}: {state}" for name, state in sorted(status.services.items())
                       if state != "SERVING"]
            report["error"] = "; ".join(failing) or "the orchestrator reports itself unhealthy"
        return report

    async def submit_task(self, task_id: str | None, payload: Mapping[str, object],
                          task_class: str = "cpu_short", priority: int = 0,
                          workflow_id: str | None = None, *, timeout_seconds: int = 0,
                          max_attempts: int = 0) -> dict[str, Any]:
        """Queue a task: ``{"success": True, "task_id": ..., "error": ""}``.

        Payload values are sent as JSON (strings as they are). A None or empty task_id gets
        a generated one. Errors raise (`InvalidArgument`, `AlreadyExists`, ...); see
        `OrchestratorClient.submit_task`.
        """
        result = await self._orchestrator.submit_task(
            task_id or "", payload, task_class=task_class, priority=priority,
            workflow_id=workflow_id or "", timeout_seconds=timeout_seconds,
            max_attempts=max_attempts)
        return {"success": result.success, "task_id": result.task_id, "error": result.error}

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        """A task's state as a dict: task_id, status, result (JSON values decoded),
        result_payload (the wire's strings), error, attempts, task_class, priority,
        workflow_id, submitted_at, started_at, completed_at, duration_ms. Raises NotFound."""
        status = await self._orchestrator.get_task_status(task_id)
        return {
            "task_id": status.task_id, "status": status.status,
            "result": status.decoded_result, "result_payload": dict(status.result),
            "error": status.error, "attempts": status.attempts,
            "task_class": status.task_class, "priority": status.priority,
            "workflow_id": status.workflow_id, "submitted_at": status.submitted_at,
            "started_at": status.started_at, "completed_at": status.completed_at,
            "duration_ms": status.duration_ms,
        }

    async def get_metrics(self) -> dict[str, float]:
        """Every orchestrator metric, name -> value."""
        return (await self._orchestrator.get_metrics()).metrics

    # -- what comes next -----------------------------------------------------------------------

    async def wait_for_task(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """The task's final state (completed, failed or cancelled).

        Raises TimeoutError naming the task after `timeout` seconds (None: no limit).
        """
        return await self._orchestrator.wait_for_task(task_id, timeout=timeout)

    async def run_task(self, task_id: str | None, payload: Mapping[str, object],
                       task_class: str = "cpu_short", priority: int = 0,
                       workflow_id: str | None = None, *, timeout: float | None = None,
                       timeout_seconds: int = 0, max_attempts: int = 0) -> TaskStatus:
        """Submit a task and wait for its final state (`timeout` bounds the wait).

        A failed task is returned (``status == "failed"``), not raised.
        """
        submitted = await self._orchestrator.submit_task(
            task_id or "", payload, task_class=task_class, priority=priority,
            workflow_id=workflow_id or "", timeout_seconds=timeout_seconds,
            max_attempts=max_attempts)
        return await self._orchestrator.wait_for_task(submitted.task_id, timeout=timeout)

    def sandbox(self, task_class: str = "cpu_short", *, image: str = "",
                env: Mapping[str, str] | None = None, ttl_seconds: int = 0,
                idle_timeout_seconds: int = 0) -> contextlib.AbstractAsyncContextManager[Sandbox]:
        """A sandbox session (through the orchestrator), deleted when the block ends::

            async with infra.sandbox("cpu_short") as sb:
                r = await sb.run("python -c 'print(1)'")   # r.exit_code, r.stdout, r.stderr
                await sb.put_file("data.txt", "x")
                data = await sb.get_file("data.txt")

        0 for ttl/idle means the class's default; see `agent_infra.client.sandbox`."""
        return self._orchestrator.sandbox(task_class, image=image, env=env,
                                          ttl_seconds=ttl_seconds,
                                          idle_timeout_seconds=idle_timeout_seconds)

    async def create_sandbox(self, task_class: str = "cpu_short", **options: Any) -> Sandbox:
        """A sandbox that lives on after this call (delete() it, or let its TTL end it)."""
        return await self._orchestrator.create_sandbox(task_class, **options)

    async def cancel_task(self, task_id: str) -> CancelResult:
        """Cancel a pending or running task; see `OrchestratorClient.cancel_task`."""
        return await self._orchestrator.cancel_task(task_id)

    def stream_task_results(self, task_ids: str | Iterable[str] = (), *,
                            include_completed: bool = False) -> AsyncIterator[TaskResult]:
        """Task states as they change; see `OrchestratorClient.stream_task_results`."""
        return self._orchestrator.stream_task_results(task_ids,
                                                      include_completed=include_completed)

    def stream_events(self, event_types: str | Iterable[str] = (), *,
                      since: float | datetime | None = None) -> AsyncIterator[SystemEvent]:
        """Events, replayed from `since` then live; see `OrchestratorClient.stream_events`."""
        return self._orchestrator.stream_events(event_types, since=since)

    async def create_workflow(self, workflow_id: str, spec: Mapping[str, Any] | str | bytes,
                              *, name: str = "", description: str = "") -> WorkflowCreated:
        """Register a workflow; see `OrchestratorClient.create_workflow`."""
        return await self._orchestrator.create_workflow(workflow_id, spec, name=name,
                                                        description=description)

    async def start_workflow_run(self, workflow_id: str, *, idempotency_key: str = "",
                                 input: Mapping[str, object] | None = None) -> RunStarted:
        """Start a workflow run; see `OrchestratorClient.start_workflow_run`."""
        return await self._orchestrator.start_workflow_run(
            workflow_id, idempotency_key=idempotency_key, input=input)

    def watch_workflow_run(self, run_id: str) -> AsyncIterator[WorkflowStatus]:
        """A run's progress until it completes or fails (StreamWorkflowStatus)."""
        return self._orchestrator.stream_workflow_status(run_id)


class InfraStarter:
    """What `AgentInfra.start` returns: ``async with`` it, ``await`` it, or ``start()`` it."""

    def __init__(self, infra: AgentInfra) -> None:
        self._infra = infra

    @property
    def infra(self) -> AgentInfra:
        """The (not yet connected) AgentInfra."""
        return self._infra

    def __await__(self) -> Generator[Any, None, AgentInfra]:
        """``await AgentInfra.start()``: the connected AgentInfra (close it when done)."""
        return self._infra.connect().__await__()

    async def __aenter__(self) -> AgentInfra:
        return await self._infra.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._infra.close()

    async def start(self) -> list[LocalDaemon]:
        """Bring the infrastructure up detached and return, leaving it running.

        Each daemon that does not answer is started in the background (its own session; it
        outlives this process) and waited for until it serves; auto_start is implied. Returns
        the daemons started, with their pids and log files (empty when both were running).
        """
        return await self._infra.up()


class _StartFactory:
    """What ``AgentInfra.start`` is when looked up (see `AgentInfra._Start`)."""

    def __init__(self, cls: type[AgentInfra], instance: AgentInfra | None) -> None:
        self._cls, self._instance = cls, instance

    def __call__(self, *args: Any, **kwargs: Any) -> InfraStarter:
        if self._instance is None:
            return InfraStarter(self._cls(*args, **kwargs))
        if args or kwargs:
            raise TypeError("infra.start() on an instance takes no arguments; use "
                            "AgentInfra.start(...) to make a new one")
        return InfraStarter(self._instance)


def _one_of(original: str, original_value: Any, ours: str, our_value: Any) -> Any:
    """The value given under either name (the original's or ours); both must then agree."""
    if original_value is not None and our_value is not None and original_value != our_value:
        raise TypeError(f"{original}={original_value!r} and {ours}={our_value!r} disagree: "
                        f"they are the same setting, give one")
    return our_value if our_value is not None else original_value


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r}: expected a number of seconds > 0")
    return value


def _absolute(path: str | Path | None) -> Path | None:
    return Path(path).expanduser().resolve() if path is not None else None
