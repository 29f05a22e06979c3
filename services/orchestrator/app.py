"""orchestrator's half of the daemon: its servicer on the shared runtime."""

from __future__ import annotations

import grpc

from client.wire import orchestrator_pb2, orchestrator_pb2_grpc
from services.runtime import DaemonApp

from .settings import OrchestratorSettings

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Translates orchestrator.v1 to the queue domain (RPCs arrive with the orchestrator issue)."""


class OrchestratorApp(DaemonApp):
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        # Until each RPC is built, the generated base answers UNIMPLEMENTED.
        servicer = OrchestratorServicer()  # type: ignore[abstract]
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
