"""orchestrator's half of the daemon: its domain, gRPC and HTTP sides on the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from agent_infra.runtime import DaemonApp, DaemonContext, package_version
from agent_infra.wire import orchestrator_pb2, orchestrator_pb2_grpc
from aiohttp import web

from .console import console_routes
from .domain import Orchestrator
from .grpc_api import OrchestratorServicer
from .http_api import queue_routes
from .http_workflows import workflow_routes
from .settings import OrchestratorSettings

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
# How often grpc.health.v1 re-checks the store and each dependency (an env-manager endpoint is
# given up to 2 s to answer).
HEALTH_INTERVAL = 5.0


class OrchestratorApp(DaemonApp[OrchestratorSettings]):
    service_names = (SERVICE_NAME,)
    health_interval = HEALTH_INTERVAL

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings
        self._orchestrator: Orchestrator | None = None
        self._context: DaemonContext[OrchestratorSettings] | None = None

    def _domain(self) -> Orchestrator:
        assert self._orchestrator is not None, "RPCs are served only after start()"
        return self._orchestrator

    def register(self, server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(self._domain, package_version()), server)

    def http_routes(self) -> Sequence[web.RouteDef]:
        def authorize(header: str | None) -> bool:
            return self._context is None or self._context.authorize(header)

        def token() -> str | None:
            return self._settings.auth.resolve_token()

        return [*queue_routes(self._domain, authorize),
                *workflow_routes(self._domain, authorize),
                *console_routes(self._domain, authorize, token)]

    async def start(self, context: DaemonContext[OrchestratorSettings]) -> None:
        self._context = context
        self._orchestrator = await Orchestrator.open(self._settings, context.registry)

    async def readiness(self) -> tuple[bool, str]:
        # The Health RPC's `healthy` follows the same rule (Orchestrator.readiness).
        return await self._domain().readiness()

    async def dependencies(self) -> dict[str, bool]:
        # The Health RPC's `services` map, by the same names: "store", "env-manager ADDRESS"
        # (each endpoint), "slurm" (with [slurm] enabled).
        return {name: state == "SERVING" for name, state in (await self._domain().health()).items()}

    async def reload(self, settings: OrchestratorSettings) -> None:
        self._settings = settings
        self._domain().reconfigure(settings)

    async def stop(self) -> None:
        if self._orchestrator is not None:
            await self._orchestrator.close()
