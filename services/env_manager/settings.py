"""env-manager's settings: the shared daemon keys plus Docker and stack limits."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from agent_infra.env_manager.registry import NAME_PATTERN, Registry, ServiceSpec
from agent_infra.env_manager.tasks.workloads import TaskSettings, WorkloadClass
from agent_infra.runtime import (
    ConfigSpec,
    DaemonSettings,
    Duration,
    Option,
    Section,
    common_options,
    truthy,
)
from pydantic import Field, PrivateAttr, model_validator


class DockerSettings(Section):
    # None: aiodocker's own default (DOCKER_HOST, else the local unix socket)
    host: str | None = None


class RetrySettings(Section):
    """Backoff for Docker API calls that fail: initial, doubling with jitter, capped."""

    attempts: int = Field(3, ge=1, le=20)
    initial: Duration = Field(0.5, gt=0)
    max: Duration = Field(30.0, gt=0)


class StackSettings(Section):
    # Marks every container this env-manager owns (label and name prefix).
    name: str = Field("agent-infra", pattern=NAME_PATTERN)
    max_concurrent: int = Field(5, ge=1, le=256, description="containers started at once")
    health_timeout: Duration = Field(60.0, gt=0, description="wait for a service to be healthy")
    retry: RetrySettings = RetrySettings()


class StateSettings(Section):
    # A factory, not a value: Path.home() runs only when the key is not configured. Under
    # systemd DynamicUser= there is no home directory, and the unit sets the key instead.
    dir: Path = Field(
        default_factory=lambda: Path.home() / ".local/state/agent-infra/env-manager")


class EnvManagerSettings(DaemonSettings):
    docker: DockerSettings = DockerSettings()
    stack: StackSettings = StackSettings()
    state: StateSettings = Field(default_factory=StateSettings)
    services: dict[str, ServiceSpec] = {}
    # Empty: cpu_short, cpu_long and gpu sized for this host (workloads.default_workload_classes).
    workload_classes: dict[str, WorkloadClass] = {}
    tasks: TaskSettings = TaskSettings()
    _registry: Registry = PrivateAttr()

    @model_validator(mode="after")
    def _build_registry(self) -> Self:
        self._registry = Registry(self.services)
        return self

    @property
    def registry(self) -> Registry:
        return self._registry


SPEC = ConfigSpec(
    daemon="env-manager",
    description="Runs the Docker service stack and task containers (env_manager.v1).",
    model=EnvManagerSettings,
    defaults={"server": {"grpc_addr": "127.0.0.1:50100", "http_addr": "127.0.0.1:50101"}},
    config_env="ENV_MANAGER_CONFIG",
    options=[
        # The original's flag-like variable; ENV_MANAGER_LOG_LEVEL (below) wins over it.
        Option("log.level", "debug logging when true", "ENV_MANAGER_VERBOSE",
               convert=lambda text: "debug" if truthy(text) else None),
        *common_options("ENV_MANAGER", http_addr_env="ENV_MANAGER_METRICS_ADDR"),
        Option("docker.host", "Docker engine address", "DOCKER_HOST", "--docker-host"),
        Option("stack.max_concurrent", "containers started at once",
               "ENV_MANAGER_MAX_CONCURRENT", "--max-concurrent"),
        Option("stack.health_timeout", "how long to wait for a service to become healthy",
               "ENV_MANAGER_HEALTH_TIMEOUT", "--health-timeout"),
        Option("stack.name", "label and name prefix of the containers this daemon owns",
               "ENV_MANAGER_STACK_NAME", "--stack-name"),
        Option("state.dir", "where task results are kept", "ENV_MANAGER_STATE_DIR",
               "--state-dir"),
    ],
)
