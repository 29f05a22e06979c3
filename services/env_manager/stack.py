"""The service stack as env-manager runs it: start, stop, restart, status and logs.

State lives in the engine, not here: containers carry labels (stack, service, config hash), so
what is running is always read back from Docker, and a restarted env-manager adopts what it
started before. The registry can be replaced at run time (SIGHUP); each call works on the
registry it started with.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from agent_infra.runtime.errors import DomainError, InvalidArgument, NotFound
from agent_infra.runtime.logs import get_logger

from .docker import containers
from .docker.containers import ContainerState, Usage
from .docker.engine import DockerEngine
from .docker.logs import LogLine, container_logs
from .probes import ProbeResult
from .registry import Registry, ServiceSpec, apply_overrides
from .startup import StartPlan, StatusUpdate

log = get_logger("stack")


@dataclass(frozen=True)
class ServiceState:
    name: str
    status: str  # running, stopped, starting, unhealthy
    container_id: str
    ports: list[int]
    health_checks: dict[str, str]
    started_at: int
    usage: Usage | None


@dataclass(frozen=True)
class StopOutcome:
    success: bool
    results: dict[str, str]


class StackManager:
    def __init__(self, engine: DockerEngine, stack: str, registry: Registry,
                 max_concurrent: int, health_timeout: float) -> None:
        self.engine = engine
        self.stack = stack
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.health_timeout = health_timeout
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.last_probes: dict[str, ProbeResult] = {}

    def record_probe(self, name: str, result: ProbeResult) -> None:
        self.last_probes[name] = result

    def start(self, names: Sequence[str], parallel: bool = True,
              overrides: Mapping[str, str] | None = None) -> AsyncIterator[StatusUpdate]:
        """Start `names` (services or groups; empty = all) and their dependencies."""
        registry = self.registry
        targets = registry.with_dependencies(registry.expand(names))
        specs = self._with_overrides(registry, targets, overrides or {})
        plan = StartPlan(
            engine=self.engine, stack=self.stack, registry=registry, specs=specs,
            max_concurrent=self.max_concurrent if parallel else 1, sequential=not parallel,
            health_timeout=self.health_timeout, locks=self._locks,
            record_probe=self.record_probe,
        )
        return plan.run()

    @staticmethod
    def _with_overrides(registry: Registry, targets: list[str],
                        overrides: Mapping[str, str]) -> dict[str, ServiceSpec]:
        for key in overrides:
            service = key.partition(".")[0]
            if service not in registry:
                raise InvalidArgument(f"overrides[{key[:200]!r}]: unknown service "
                                      f"{service[:120]!r}")
        modes = registry.network_modes()
        return {name: apply_overrides(registry.spec(name), name, overrides, modes)
                for name in targets}

    async def stop(self, names: Sequence[str], timeout: float | None = None) -> StopOutcome:
        """Stop and remove `names` and what depends on them, dependents first."""
        registry = self.registry
        existing = await containers.find_service_containers(self.engine, self.stack)
        if names:
            targets = registry.with_dependents(registry.expand(names))
        else:
            # Everything: the registry's services and any container of ours it no longer knows.
            targets = registry.names + sorted(set(existing) - set(registry.names))
        # Each service stops as soon as what depends on it has exited: no level waits for its
        # slowest member, and removing a container (a third of the time) overlaps the next
        # stops. Containers the registry no longer knows may depend on anything: they go first.
        loop = asyncio.get_running_loop()
        exited = {name: loop.create_future() for name in targets}
        orphans = [name for name in targets if name not in registry]

        async def stop_after_dependents(name: str) -> str:
            try:
                waits = orphans if name in registry else []
                if name in registry:
                    waits = waits + [d for d in registry.dependents(name) if d in exited]
                await asyncio.gather(*(asyncio.shield(exited[d]) for d in waits))
                return await self._stop_one(name, existing.get(name), timeout, exited[name])
            finally:
                if not exited[name].done():
                    exited[name].set_result(None)

        outcomes = await asyncio.gather(*(stop_after_dependents(name) for name in targets))
        results = dict(zip(targets, outcomes, strict=True))
        return StopOutcome(all(not r.startswith("error") for r in results.values()), results)

    async def _stop_one(self, name: str, state: ContainerState | None,
                        timeout: float | None,
                        exited: asyncio.Future[None] | None = None) -> str:
        """Stop, then remove; `exited` resolves between the two, for what waits on this one."""
        if state is None:
            return "not running"
        grace = timeout if timeout is not None else (
            self.registry.spec(name).stop_grace if name in self.registry else 10.0)
        async with self._locks[name]:
            try:
                if state.running:
                    await containers.stop(self.engine, state.id, grace)
                if exited is not None and not exited.done():
                    exited.set_result(None)
                await containers.remove(self.engine, state.id, force=True)
            except NotFound:
                return "stopped"
            except DomainError as exc:
                log.warning("stop_failed", service=name, error=str(exc))
                return f"error: {exc}"
        self.last_probes.pop(name, None)
        return "stopped"

    async def restart(self, name: str, timeout: float | None = None) -> tuple[bool, str]:
        """Stop one service, then start it with its dependency conditions checked again."""
        registry = self.registry
        registry.spec(name)  # NotFound for unknown names
        existing = await containers.find_service_containers(self.engine, self.stack)
        stopped = await self._stop_one(name, existing.get(name), timeout)
        if stopped.startswith("error"):
            return False, stopped
        final: StatusUpdate | None = None
        async for update in self.start([name]):
            if update.service == name:
                final = update
        if final is None or final.status != "healthy":
            reason = final.message if final else "did not start"
            return False, f"{name} restarted but is not healthy: {reason}"
        return True, f"{name} restarted: {final.message}"

    async def status(self, names: Sequence[str], with_usage: bool = True
                     ) -> dict[str, ServiceState]:
        registry = self.registry
        wanted = registry.expand(names) if names else registry.names
        existing = await containers.find_service_containers(self.engine, self.stack)
        if not names:
            wanted += sorted(set(existing) - set(wanted))
        usages: dict[str, Usage | None] = {}
        if with_usage:
            running = [n for n in wanted if n in existing and existing[n].running]
            samples = await asyncio.gather(
                *(containers.resource_usage(self.engine, existing[n].id) for n in running),
                return_exceptions=True)
            usages = {n: s if isinstance(s, Usage) else None
                      for n, s in zip(running, samples, strict=True)}
        return {name: self._state_of(name, existing.get(name), usages.get(name))
                for name in wanted}

    def _state_of(self, name: str, state: ContainerState | None,
                  usage: Usage | None) -> ServiceState:
        if state is None:
            return ServiceState(name, "stopped", "", [], {}, 0, None)
        checks: dict[str, str] = {}
        probe = self.last_probes.get(name)
        if probe is not None:
            checks = {**probe.details, "healthy": str(probe.healthy).lower(),
                      "message": probe.message}
        if state.health:
            checks["docker"] = state.health
        if not state.running:
            status = "stopped"
        elif state.health == "starting" or (probe is None and self._has_probe(name)):
            status = "starting"
        elif state.health == "unhealthy" or (probe is not None and not probe.healthy):
            status = "unhealthy"
        else:
            status = "running"
        # started_at is the current run's start: a stopped container has none.
        started_at = state.started_at if state.running else 0
        return ServiceState(name, status, state.id, state.host_ports, checks, started_at, usage)

    def _has_probe(self, name: str) -> bool:
        return name in self.registry and self.registry.spec(name).healthcheck is not None

    async def logs(self, name: str, *, follow: bool, tail: int, since: int
                   ) -> tuple[ContainerState, AsyncIterator[LogLine]]:
        if not name:
            raise InvalidArgument("service_name is required")
        existing = await containers.find_service_containers(self.engine, self.stack)
        state = existing.get(name)
        if state is None:
            if name in self.registry:
                raise NotFound(f"service {name!r} has no container: start it first")
            raise NotFound(f"unknown service {name!r}")
        return state, container_logs(self.engine, state.id, follow=follow, tail=tail,
                                     since=since)
