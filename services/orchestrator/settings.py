"""orchestrator's settings: the shared daemon keys plus the queue, the store and dispatch."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from agent_infra.runtime import (
    ConfigSpec,
    DaemonSettings,
    Duration,
    Option,
    Section,
    common_options,
)
from pydantic import Field, model_validator

CLASS_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class ClassSettings(Section):
    """One workload class's queue."""

    # Live-reloadable: raising it dispatches more at once; lowering it lets running tasks finish.
    concurrency: int = Field(4, ge=0, le=10_000)
    max_backlog: int = Field(100_000, ge=1, description="pending tasks before submits are refused")
    default_timeout: Duration = Field(300.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=100)


class StoreSettings(Section):
    # A factory, not a value: Path.home() runs only when the key is not configured. Under
    # systemd DynamicUser= there is no home directory, and the unit sets the key instead.
    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local/state/agent-infra/orchestrator")


class EnvManagerEndpoint(Section):
    address: str = "127.0.0.1:50100"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token_file: Path | None = None


class DispatchSettings(Section):
    """Backoff between attempts of one task: initial, doubling with jitter, capped."""

    retry_initial: Duration = Field(0.5, gt=0)
    retry_max: Duration = Field(30.0, gt=0)
    # How long dispatching waits for some env-manager to answer before it tries anyway.
    availability_check: Duration = Field(2.0, gt=0)


class EventSettings(Section):
    retention: Duration = Field(7 * 24 * 3600.0, gt=0)
    max_events: int = Field(1_000_000, ge=1000)


class RetentionSettings(Section):
    """How long finished tasks are kept (then deleted in bounded batches, every `interval`).

    A task a live (pending or running) workflow run refers to is kept whatever its age."""

    tasks: Duration = Field(7 * 24 * 3600.0, gt=0)
    interval: Duration = Field(600.0, gt=0)


class LimitSettings(Section):
    max_payload_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Results (StreamTaskResults) or events (StreamEvents) one subscriber may leave unread. Past
    # it, a results stream ends with RESOURCE_EXHAUSTED ("subscriber too slow"); an events
    # stream drops its buffer and reads the missed range back from the store (no gap).
    subscriber_buffer: int = Field(10_000, ge=1, le=1_000_000)


class SlurmSettings(Section):
    """The gpu_slurm class's executor; without it, gpu_slurm submits are refused.

    On SIGHUP every key but `enabled` and `work_dir` applies to the running executor (new
    submissions take the new partition and sbatch_args; jobs in flight carry on, polled with
    the new settings); those two need a restart.
    """

    enabled: bool = False
    partition: str = ""
    # Each is one executable (a name on PATH or a path), run with an argument list, no shell.
    sbatch: str = "sbatch"
    squeue: str = "squeue"
    sacct: str = "sacct"
    scontrol: str = "scontrol"
    scancel: str = "scancel"
    poll_interval: Duration = Field(5.0, gt=0)
    # Job scripts, their stdout/stderr and exit records. The compute nodes write there, so on a
    # real cluster it must be a filesystem they share. Default: <store.data_dir>/slurm.
    work_dir: Path | None = None
    # Added to every sbatch call as given (e.g. ["--account=ml", "--qos=normal"]).
    sbatch_args: list[str] = Field(default_factory=list)
    output_limit_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # One sbatch/squeue/scontrol call; an unreachable controller makes them retry for a while.
    command_timeout: Duration = Field(60.0, gt=0)
    # While following a job, how long the controller may stay unreachable before the attempt is
    # handed back to the scheduler as a transient failure (the job itself keeps running).
    outage_grace: Duration = Field(600.0, gt=0)
    # Job files older than this are removed.
    retention: Duration = Field(7 * 24 * 3600.0, gt=0)
    # How long a job may stay PENDING in Slurm (from sbatch) before it is cancelled and its task
    # fails as never started. 0: the task's own timeout (at least 60 s), so no task waits much
    # longer than it may run.
    pending_timeout: Duration = Field(0.0, ge=0)
    # What a workflow's `training` node runs when its config has no `command`: an argv, given
    # the node's config, the run's input and context as JSON on stdin (workflows/nodes.py).
    training_command: list[str] = Field(default_factory=list)


DEFAULT_CLASSES = {
    "cpu_short": {"concurrency": 4, "default_timeout": 300.0},
    "cpu_long": {"concurrency": 2, "default_timeout": 3600.0},
    "gpu": {"concurrency": 1, "default_timeout": 3600.0},
    "gpu_slurm": {"concurrency": 4, "default_timeout": 3600.0},
}


class OrchestratorSettings(DaemonSettings):
    store: StoreSettings = Field(default_factory=StoreSettings)
    classes: dict[str, ClassSettings] = Field(default_factory=dict)
    env_managers: list[EnvManagerEndpoint] = Field(default_factory=lambda: [EnvManagerEndpoint()])
    dispatch: DispatchSettings = DispatchSettings()
    events: EventSettings = EventSettings()
    limits: LimitSettings = LimitSettings()
    retention: RetentionSettings = RetentionSettings()
    slurm: SlurmSettings = SlurmSettings()

    @model_validator(mode="after")
    def _check(self) -> Self:
        import re

        for name in self.classes:
            if not re.fullmatch(CLASS_NAME_PATTERN, name):
                raise ValueError(f"classes.{name}: a class name is lower-case letters, digits "
                                 "and '_', starting with a letter")
        if not self.classes:
            raise ValueError("classes: at least one workload class is needed")
        if not self.env_managers:
            raise ValueError("env_managers: at least one endpoint is needed")
        return self


def _env_manager_list(text: str) -> list[dict[str, str]]:
    return [{"address": address.strip()} for address in text.split(",") if address.strip()]


SPEC = ConfigSpec(
    daemon="orchestrator",
    description="Durable task queue, workflows and events (orchestrator.v1).",
    model=OrchestratorSettings,
    defaults={
        "server": {"grpc_addr": "127.0.0.1:50052", "http_addr": "127.0.0.1:9097"},
        "classes": DEFAULT_CLASSES,
    },
    config_env="ORCHESTRATOR_CONFIG",
    options=[
        *common_options("ORCHESTRATOR", http_addr_env="ORCHESTRATOR_HTTP_ADDR"),
        Option("store.data_dir", "where the task store (SQLite) lives", "ORCHESTRATOR_DATA_DIR",
               "--data-dir"),
        Option("env_managers", "env-manager address(es), comma-separated",
               "ORCHESTRATOR_ENV_MANAGERS", "--env-managers", convert=_env_manager_list),
    ],
)
