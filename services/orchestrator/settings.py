"""orchestrator's settings: the shared daemon keys (queue and store keys come with the queue)."""

from __future__ import annotations

from services.runtime import ConfigSpec, DaemonSettings, common_options


class OrchestratorSettings(DaemonSettings):
    pass


SPEC = ConfigSpec(
    daemon="orchestrator",
    description="Durable task queue, workflows and events (orchestrator.v1).",
    model=OrchestratorSettings,
    defaults={"server": {"grpc_addr": "127.0.0.1:50052", "http_addr": "127.0.0.1:9097"}},
    config_env="ORCHESTRATOR_CONFIG",
    options=common_options("ORCHESTRATOR", http_addr_env="ORCHESTRATOR_HTTP_ADDR"),
)
