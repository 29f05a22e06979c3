"""env-manager's settings: the shared daemon keys plus Docker and stack limits."""

from __future__ import annotations

from pydantic import Field

from services.runtime import (
    ConfigSpec,
    DaemonSettings,
    Duration,
    Option,
    Section,
    common_options,
    truthy,
)


class DockerSettings(Section):
    # None: aiodocker's own default (DOCKER_HOST, else the local unix socket)
    host: str | None = None


class StackSettings(Section):
    max_concurrent: int = Field(5, ge=1, le=256, description="containers started at once")
    health_timeout: Duration = Field(60.0, gt=0, description="wait for a service to be healthy")


class EnvManagerSettings(DaemonSettings):
    docker: DockerSettings = DockerSettings()
    stack: StackSettings = StackSettings()


SPEC = ConfigSpec(
    daemon="env-manager",
    description="Runs the Docker service stack and task containers (env_manager.v1).",
    model=EnvManagerSettings,
    defaults={"server": {"grpc_addr": "127.0.0.1:50100", "http_addr": "127.0.0.1:50101"}},
    config_env="ENV_MANAGER_CONFIG",
    options=[
        # The original's flag-like variable; ENV_MANAGER_LOG_LEVEL (below) wins over it.
        Option("log.level", "debug logging when true", "ENV_MANAGER_VERBOSE",
               env_value=lambda text: "debug" if truthy(text) else None),
        *common_options("ENV_MANAGER", http_addr_env="ENV_MANAGER_METRICS_ADDR"),
        Option("docker.host", "Docker engine address", "DOCKER_HOST", "--docker-host"),
        Option("stack.max_concurrent", "containers started at once",
               "ENV_MANAGER_MAX_CONCURRENT", "--max-concurrent"),
        Option("stack.health_timeout", "how long to wait for a service to become healthy",
               "ENV_MANAGER_HEALTH_TIMEOUT", "--health-timeout"),
    ],
)
