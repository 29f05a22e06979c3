"""What EnvManagerClient returns: frozen dataclasses with the wire API's field names.

Field meanings are those of env_manager.v1 (WIRE-API.md); timestamps are unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "GPU",
    "HardwareInfo",
    "HealthUpdate",
    "ImagePullProgress",
    "LogEntry",
    "ResourceAvailability",
    "ResourceUsage",
    "RestartServiceResult",
    "ServiceStatus",
    "ServiceStatusUpdate",
    "StopServicesResult",
    "TaskExecution",
]


@dataclass(frozen=True)
class ServiceStatusUpdate:
    """One transition while services start."""

    service_name: str
    #: starting, healthy, unhealthy or stopped (stopped: not started, `message` says why).
    status: str
    message: str
    #: Share of the whole start that is done, 0-100; reaches 100 with the last service.
    progress: int


@dataclass(frozen=True)
class StopServicesResult:
    """Outcome of StopServices."""

    #: True when every service stopped.
    success: bool
    #: Service name -> "stopped", "not running" or "error: ...".
    service_results: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartServiceResult:
    """Outcome of RestartService."""

    #: True when the service is running (and healthy, if it has a health check) again.
    success: bool
    message: str


@dataclass(frozen=True)
class ResourceUsage:
    """Live figures from the engine's container stats."""

    cpu_percent: float
    memory_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int


@dataclass(frozen=True)
class ServiceStatus:
    """A service's state, read from the engine."""

    name: str
    #: running, stopped, starting or unhealthy.
    status: str
    #: Empty when no container exists.
    container_id: str
    #: Published host ports.
    ports: tuple[int, ...]
    #: Health check name -> last result text.
    health_checks: dict[str, str]
    #: When the container started; 0 when it is not running.
    started_at: int
    #: None when the container is not running.
    resource_usage: ResourceUsage | None


@dataclass(frozen=True)
class HealthUpdate:
    """A service's health: its state when the stream starts, then every change (and heartbeats)."""

    service_name: str
    healthy: bool
    message: str
    timestamp: int
    details: dict[str, str]


@dataclass(frozen=True)
class GPU:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    memory_bytes: int
    utilization_percent: float


@dataclass(frozen=True)
class HardwareInfo:
    """The env-manager host's capacity; `gpus` is empty without nvidia-smi."""

    cpu_cores: int
    memory_bytes: int
    gpus: tuple[GPU, ...]


@dataclass(frozen=True)
class ResourceAvailability:
    """Whether a task of a workload class could start now, and the host's hardware."""

    available: bool
    #: Tasks of this class that may run at once.
    capacity: int
    #: Tasks of this class running now.
    in_use: int
    hardware: HardwareInfo
    #: Every workload class of the endpoint -> what a payload may hold for it (JSON text:
    #: handler, default_image, allowed_images, mounts, max_timeout_seconds, enabled).
    workload_contracts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskExecution:
    """Result of ExecuteTask.

    `result` holds what env-manager reports, all strings: exit_code, stdout, stderr,
    stdout_truncated, stderr_truncated, container_id, image, started_at, finished_at,
    duration_ms, timed_out, cached, ... The properties below read the common ones.
    """

    #: False for a non-zero exit or a timeout; `error` says which.
    success: bool
    result: dict[str, str]
    error: str
    #: This call's latency on the server, in milliseconds.
    latency_ms: float

    @property
    def exit_code(self) -> int | None:
        """The process's exit code (137 when killed at its timeout); None when none was reported."""
        text = self.result.get("exit_code", "")
        try:
            return int(text)
        except ValueError:
            return None

    @property
    def stdout(self) -> str:
        return self.result.get("stdout", "")

    @property
    def stderr(self) -> str:
        return self.result.get("stderr", "")

    @property
    def timed_out(self) -> bool:
        return self.result.get("timed_out") == "true"

    @property
    def cached(self) -> bool:
        """True when env-manager answered from a previous run of the same task_id."""
        return self.result.get("cached") == "true"


@dataclass(frozen=True)
class ImagePullProgress:
    """Progress of one image pull."""

    image_name: str
    #: downloading, extracting, complete or error.
    status: str
    #: Bytes done so far.
    current: int
    #: Total bytes when known, else 0.
    total: int
    progress_percent: int
    #: The engine's words, e.g. why a pull failed (a field agent-infra added to the wire API).
    message: str = ""


@dataclass(frozen=True)
class LogEntry:
    """One line of a service's container log."""

    service_name: str
    container_id: str
    #: stdout or stderr.
    stream: str
    message: str
    timestamp: int
