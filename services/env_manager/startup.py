"""Bringing a set of services up: dependency order, parallel where the graph allows.

Each service gets a task that waits for its dependencies' conditions, takes a start slot (at most
`max_concurrent` containers being created/started at once), adopts a running container with the
same config or (re)creates it, then waits for its own readiness. Every transition becomes a
`StatusUpdate` carrying the share of the plan that is done.

The plan runs detached from whoever asked: a client that goes away does not leave a half-started
stack behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from agent_infra.runtime.errors import DomainError
from agent_infra.runtime.logs import get_logger

from .docker import containers
from .docker.containers import ContainerState
from .docker.engine import DockerEngine
from .probes import ProbeResult, probe
from .registry import Registry, ServiceSpec

log = get_logger("startup")

# How often readiness is re-probed while a service starts: fast, so the stack is up soon after
# it really is, whatever the (steady-state) probe interval says.
STARTUP_PROBE_INTERVAL = 0.1
# A service's updates: "starting", then how it got a container, then healthy/unhealthy/stopped
# (at most 3, and the plan's own failure adds one for the services it did not finish).
UPDATES_PER_SERVICE = 4


@dataclass(frozen=True)
class StatusUpdate:
    service: str
    status: str  # starting, healthy, unhealthy, stopped (the original's vocabulary)
    message: str
    progress: int  # share of the plan done, 0-100


@dataclass
class _Milestones:
    """What dependents wait for: each resolves True (reached) or False (never will be)."""

    started: asyncio.Future[bool]
    healthy: asyncio.Future[bool]
    completed: asyncio.Future[bool]

    @classmethod
    def new(cls) -> _Milestones:
        loop = asyncio.get_running_loop()
        return cls(loop.create_future(), loop.create_future(), loop.create_future())

    def fail_all(self) -> None:
        for future in (self.started, self.healthy, self.completed):
            if not future.done():
                future.set_result(False)


@dataclass
class StartPlan:
    engine: DockerEngine
    stack: str
    registry: Registry
    specs: Mapping[str, ServiceSpec]  # the services to start, overrides applied
    max_concurrent: int
    # One service at a time, each ready before the next starts (StartServices parallel=false).
    sequential: bool
    health_timeout: float
    locks: Mapping[str, asyncio.Lock]  # per service, shared across concurrent plans
    record_probe: Callable[[str, ProbeResult], None]
    _updates: asyncio.Queue[StatusUpdate | None] = field(default_factory=asyncio.Queue)
    _done: int = 0
    ok: dict[str, bool] = field(default_factory=dict)

    def run(self) -> AsyncIterator[StatusUpdate]:
        """Start the plan in the background and iterate its updates until it is over."""
        # Bounded by the plan itself: at most UPDATES_PER_SERVICE per service, then the end
        # marker, so a subscriber that stops reading holds no more than that. A plan runs
        # detached (never held back by its reader), so the bound is the plan's, not a wait.
        self._updates = asyncio.Queue(UPDATES_PER_SERVICE * len(self.specs) + 1)
        task = asyncio.get_running_loop().create_task(self._run_all())
        _keep_alive(task)
        return self._drain()

    async def _drain(self) -> AsyncIterator[StatusUpdate]:
        while (update := await self._updates.get()) is not None:
            yield update

    async def _run_all(self) -> None:
        try:
            existing = await containers.find_service_containers(self.engine, self.stack)
            milestones = {name: _Milestones.new() for name in self.specs}
            slots = asyncio.Semaphore(self.max_concurrent)
            await asyncio.gather(*(
                self._run_one(name, existing.get(name), milestones, slots)
                for name in self.specs
            ))
        except DomainError as exc:
            for name in self.specs:
                if name not in self.ok:
                    self.ok[name] = False
                    self._emit(name, "stopped", f"not started: {exc}", done=True)
        finally:
            self._updates.put_nowait(None)

    def _emit(self, name: str, status: str, message: str, *, done: bool = False) -> None:
        if done:
            self._done += 1
        progress = self._done * 100 // max(len(self.specs), 1)
        log.info("service_status", service=name, status=status, message=message)
        self._updates.put_nowait(StatusUpdate(name, status, message, progress))

    async def _run_one(self, name: str, existing: ContainerState | None,
                       milestones: Mapping[str, _Milestones],
                       slots: asyncio.Semaphore) -> None:
        mine = milestones[name]
        spec = self.specs[name]
        try:
            blocked = await self._wait_for_dependencies(name, spec, milestones)
            if blocked:
                mine.fail_all()
                self.ok[name] = False
                self._emit(name, "stopped", f"not started: {blocked}", done=True)
                return
            async with self.locks[name]:
                await slots.acquire()
                try:
                    self._emit(name, "starting", "starting container")
                    state, how = await self._ensure_running(name, spec, existing)
                    if not self.sequential:
                        # The limit is on containers being started; readiness waits are free.
                        slots.release()
                    mine.started.set_result(True)
                    self._emit(name, "starting", how)
                    healthy, message = await self._wait_ready(name, spec, state, mine)
                finally:
                    if self.sequential:
                        slots.release()
            self.ok[name] = healthy
            self._emit(name, "healthy" if healthy else "unhealthy", message, done=True)
        except DomainError as exc:
            mine.fail_all()
            self.ok[name] = False
            self._emit(name, "unhealthy", f"failed to start: {exc}", done=True)
        except Exception as exc:
            mine.fail_all()
            self.ok[name] = False
            log.exception("service_start_crashed", service=name)
            self._emit(name, "unhealthy", f"failed to start: {type(exc).__name__}: {exc}",
                       done=True)

    async def _wait_for_dependencies(self, name: str, spec: ServiceSpec,
                                     milestones: Mapping[str, _Milestones]) -> str:
        """'' when every dependency reached its condition, else why not."""
        for dependency, condition in spec.depends_on.items():
            marks = milestones.get(dependency)
            if marks is None:  # not part of this plan: it was adopted as is
                continue
            future = {"started": marks.started, "healthy": marks.healthy,
                      "completed_successfully": marks.completed}[condition]
            reached = await asyncio.shield(future)
            if not reached and self.specs[dependency].required:
                return f"dependency {dependency} did not become {condition.replace('_', ' ')}"
        return ""

    async def _ensure_running(self, name: str, spec: ServiceSpec,
                              existing: ContainerState | None) -> tuple[ContainerState, str]:
        wanted = spec.config_hash()
        if existing is not None and existing.config_hash == wanted and existing.running:
            return existing, f"adopted running container {existing.id[:12]}"
        if existing is not None and existing.config_hash == wanted:
            await containers.start(self.engine, existing.id)
            return await containers.inspect_state(self.engine, existing.id), \
                f"restarted existing container {existing.id[:12]}"
        if existing is not None:
            await containers.remove(self.engine, existing.id, force=True)
        container_id = await containers.create_service_container(
            self.engine, self.stack, name, spec)
        await containers.start(self.engine, container_id)
        how = "recreated: config changed" if existing is not None else "container started"
        return await containers.inspect_state(self.engine, container_id), how

    async def _wait_ready(self, name: str, spec: ServiceSpec, state: ContainerState,
                          mine: _Milestones) -> tuple[bool, str]:
        """Probe until healthy (or, when a dependent waits for it, until it exits)."""
        deadline = time.monotonic() + self.health_timeout
        waits_for_exit = any(other.depends_on.get(name) == "completed_successfully"
                             for other in self.specs.values())
        exited = asyncio.ensure_future(containers.wait_exit(self.engine, state.id))
        try:
            while True:
                if exited.done():
                    code = exited.result()
                    for future in (mine.completed, mine.healthy):
                        if not future.done():
                            future.set_result(code == 0)
                    return code == 0, f"exited with code {code}"
                if spec.healthcheck is not None and spec.healthcheck.type == "docker":
                    state = await containers.inspect_state(self.engine, state.id)
                result = await probe(self.engine, spec, state)
                self.record_probe(name, result)
                if result.healthy and not mine.healthy.done():
                    mine.healthy.set_result(True)
                if result.healthy and not waits_for_exit:
                    return True, result.message or "healthy"
                if time.monotonic() > deadline:
                    mine.fail_all()
                    return False, f"not healthy after {self.health_timeout:g}s: {result.message}"
                # Wakes at once if the container exits meanwhile.
                await asyncio.wait({exited}, timeout=min(STARTUP_PROBE_INTERVAL, _interval(spec)))
        finally:
            exited.cancel()


def _interval(spec: ServiceSpec) -> float:
    return spec.healthcheck.interval if spec.healthcheck else STARTUP_PROBE_INTERVAL


_background: set[asyncio.Task[None]] = set()


def _keep_alive(task: asyncio.Task[None]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)
