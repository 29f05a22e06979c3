"""env-manager's domain in one object: the stack, the task runner and the host's capacity.

Built from settings at start, reconfigured on reload, and watched for Docker going away: the
daemon keeps running without Docker and reports NOT_SERVING until the engine is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent_infra.runtime.errors import InvalidArgument, Unavailable
from agent_infra.runtime.logs import get_logger

from .docker.engine import DockerEngine
from .resources import Availability, HardwareProbe, availability, cpu_cores
from .sandboxes.manager import SandboxManager
from .settings import EnvManagerSettings
from .stack import StackManager
from .tasks.runner import TaskRunner
from .tasks.store import TaskStore
from .tasks.workloads import resolve_workload_classes

log = get_logger("env_manager")

DOCKER_CHECK_INTERVAL = 5.0
DOCKER_RECHECK_INTERVAL = 1.0

HealthSetter = Callable[[bool, str], Awaitable[None]]


class EnvManager:
    def __init__(self, settings: EnvManagerSettings, engine: DockerEngine, store: TaskStore,
                 hardware: HardwareProbe, gpu_count: int) -> None:
        self.engine = engine
        self.hardware = hardware
        self._gpu_count = gpu_count
        self.stack = StackManager(engine, settings.stack.name, settings.registry,
                                  settings.stack.max_concurrent, settings.stack.health_timeout)
        self.runner = TaskRunner(
            engine, settings.stack.name,
            resolve_workload_classes(settings.workload_classes, cpu_cores(), gpu_count),
            settings.tasks, store, max_message_bytes=settings.server.max_message_bytes,
        )
        self.sandboxes = SandboxManager(engine, settings.stack.name, self.runner.classes,
                                        self.runner.warm, settings.state.dir / "sandboxes")
        self.docker_error = ""
        self._recovered = False

    @classmethod
    async def open(cls, settings: EnvManagerSettings) -> EnvManager:
        engine = DockerEngine(settings.docker.host, settings.stack.retry)
        settings.state.dir.mkdir(parents=True, exist_ok=True)
        store = await TaskStore.open(settings.state.dir / "tasks.sqlite3",
                                     retention=settings.tasks.retention)
        hardware = HardwareProbe()
        info = await hardware.get()
        return cls(settings, engine, store, hardware, len(info.gpus))

    def reconfigure(self, settings: EnvManagerSettings) -> None:
        self.stack.registry = settings.registry
        self.stack.max_concurrent = settings.stack.max_concurrent
        self.stack.health_timeout = settings.stack.health_timeout
        self.engine.retry = settings.stack.retry
        self.runner.reconfigure(
            resolve_workload_classes(settings.workload_classes, cpu_cores(), self._gpu_count),
            settings.tasks,
        )
        self.sandboxes.reconfigure(self.runner.classes)

    async def availability(self, workload_class: str) -> Availability:
        return await availability(self.runner, self.hardware, workload_class)

    def images(self) -> list[str]:
        """Every image the registry and the workload classes need."""
        task_images = {image for workload in self.runner.classes.values()
                       for image in (workload.image, *workload.allowed_images)}
        return sorted(set(self.stack.registry.images()) | task_images)

    def pullable(self, names: list[str]) -> list[str]:
        """The images PullImages is to pull for `names` (empty: every image in images()).

        Only images the operator's config names may be pulled: anything else is INVALID_ARGUMENT
        naming it, and nothing is pulled. DESIGN's status rules give INVALID_ARGUMENT to values
        that are unknown, and ExecuteTask refuses an image outside a class's allowed_images the
        same way (PERMISSION_DENIED would say the caller's credentials are at fault; they are not).
        """
        allowed = self.images()
        if not names:
            return allowed
        refused = [name for name in dict.fromkeys(names) if name not in allowed]
        if refused:
            shown = ", ".join(repr(name[:200]) for name in refused[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            raise InvalidArgument(
                f"image_names: {shown}{more} not named by the service registry or any workload "
                "class; PullImages pulls only configured images (add it to a service's image or "
                "a class's allowed_images)")
        return names

    async def check_docker(self) -> bool:
        try:
            await self.engine.ping()
        except Unavailable as exc:
            if str(exc) != self.docker_error:
                log.warning("docker_unreachable", error=str(exc))
            self.docker_error = str(exc)
            return False
        if self.docker_error:
            log.info("docker_back", address=self.engine.address)
        self.docker_error = ""
        if not self._recovered:
            # Task containers a previous env-manager left running are finished and stored.
            await self.runner.recover()
            # Sandboxes it left are re-adopted, or removed when stopped or expired.
            await self.sandboxes.adopt()
            self._recovered = True
        return True

    async def watch_docker(self, set_health: HealthSetter) -> None:
        """Keep the daemon's health in step with the engine's reachability, for ever."""
        while True:
            ok = await self.check_docker()
            await set_health(ok, "serving" if ok else self.docker_error)
            await asyncio.sleep(DOCKER_CHECK_INTERVAL if ok else DOCKER_RECHECK_INTERVAL)

    async def close(self) -> None:
        await self.sandboxes.close()
        await self.runner.aclose()
        await self.runner.store.close()
        await self.engine.close()
