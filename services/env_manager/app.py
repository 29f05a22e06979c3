"""env-manager's half of the daemon: its domain and servicer on the shared runtime."""

from __future__ import annotations

import asyncio

import grpc
from agent_infra.runtime import DaemonApp, DaemonContext
from agent_infra.wire import env_manager_pb2, env_manager_pb2_grpc

from .manager import EnvManager
from .servicer import EnvManagerServicer
from .settings import EnvManagerSettings

SERVICE_NAME = env_manager_pb2.DESCRIPTOR.services_by_name["EnvManagerService"].full_name


class EnvManagerApp(DaemonApp[EnvManagerSettings]):
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: EnvManagerSettings) -> None:
        self._settings = settings
        self._manager: EnvManager | None = None
        self._watch: asyncio.Task[None] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        env_manager_pb2_grpc.add_EnvManagerServiceServicer_to_server(
            EnvManagerServicer(self._domain), server)

    def _domain(self) -> EnvManager:
        assert self._manager is not None, "RPCs are served only after start()"
        return self._manager

    async def start(self, context: DaemonContext[EnvManagerSettings]) -> None:
        self._manager = await EnvManager.open(self._settings)
        self._context = context

    async def readiness(self) -> tuple[bool, str]:
        manager = self._domain()
        ok = await manager.check_docker()
        self._watch = asyncio.get_running_loop().create_task(
            manager.watch_docker(self._context.health.set))
        return ok, "serving" if ok else manager.docker_error

    async def reload(self, settings: EnvManagerSettings) -> None:
        self._settings = settings
        self._domain().reconfigure(settings)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._manager is not None:
            await self._manager.close()
