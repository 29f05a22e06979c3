"""env-manager's half of the daemon: its servicer on the shared runtime."""

from __future__ import annotations

import grpc

from client.wire import env_manager_pb2, env_manager_pb2_grpc
from services.runtime import DaemonApp

from .settings import EnvManagerSettings

SERVICE_NAME = env_manager_pb2.DESCRIPTOR.services_by_name["EnvManagerService"].full_name


class EnvManagerServicer(env_manager_pb2_grpc.EnvManagerServiceServicer):
    """Translates env_manager.v1 to the stack domain (RPCs arrive with the env-manager issue)."""


class EnvManagerApp(DaemonApp):
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: EnvManagerSettings) -> None:
        self._settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        # Until each RPC is built, the generated base answers UNIMPLEMENTED.
        servicer = EnvManagerServicer()  # type: ignore[abstract]
        env_manager_pb2_grpc.add_EnvManagerServiceServicer_to_server(servicer, server)
