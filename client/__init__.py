"""agent-infra client: typed clients for env-manager and the orchestrator, and the CLI."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exports load on first use: the orchestrator imports env-manager's client
# without paying for AgentInfra, the CLI's helpers and the rest at start-up.
_EXPORTS = {
    "AgentInfra": ".infra",
    "AlreadyExists": ".errors",
    "CancelResult": ".orchestrator_models",
    "Cancelled": ".errors",
    "ConnectionConfig": "._transport",
    "DeadlineExceeded": ".errors",
    "Deadlines": "._transport",
    "EnvManagerClient": ".env_manager",
    "FailedPrecondition": ".errors",
    "GPU": ".env_manager_models",
    "HardwareInfo": ".env_manager_models",
    "HealthStatus": ".orchestrator_models",
    "HealthUpdate": ".env_manager_models",
    "ImagePullProgress": ".env_manager_models",
    "InfraError": ".errors",
    "InfraStarter": ".infra",
    "InfraUnavailable": ".errors",
    "Internal": ".errors",
    "InvalidArgument": ".errors",
    "LocalDaemon": ".infra",
    "LogEntry": ".env_manager_models",
    "Metrics": ".orchestrator_models",
    "NotFound": ".errors",
    "OrchestratorClient": ".orchestrator",
    "PermissionDenied": ".errors",
    "ResourceAvailability": ".env_manager_models",
    "ResourceExhausted": ".errors",
    "ResourceUsage": ".env_manager_models",
    "RestartServiceResult": ".env_manager_models",
    "RunStarted": ".orchestrator_models",
    "ServiceStatus": ".env_manager_models",
    "ServiceStatusUpdate": ".env_manager_models",
    "StopServicesResult": ".env_manager_models",
    "SubmitResult": ".orchestrator_models",
    "SystemEvent": ".orchestrator_models",
    "TaskExecution": ".env_manager_models",
    "TaskPage": ".orchestrator_models",
    "TaskResult": ".orchestrator_models",
    "TaskStatus": ".orchestrator_models",
    "TaskSummary": ".orchestrator_models",
    "Unauthenticated": ".errors",
    "Unimplemented": ".errors",
    "WorkflowCreated": ".orchestrator_models",
    "WorkflowStatus": ".orchestrator_models",
    "WorkflowSummary": ".orchestrator_models",
    "ensure_infra": ".shared",
    "ensure_infra_sync": ".shared",
    "shutdown_infra": ".shared",
    "use_infra": ".shared",
}

if TYPE_CHECKING:
    from ._transport import (
        ConnectionConfig,
        Deadlines,
    )
    from .env_manager import (
        EnvManagerClient,
    )
    from .env_manager_models import (
        GPU,
        HardwareInfo,
        HealthUpdate,
        ImagePullProgress,
        LogEntry,
        ResourceAvailability,
        ResourceUsage,
        RestartServiceResult,
        ServiceStatus,
        ServiceStatusUpdate,
        StopServicesResult,
        TaskExecution,
    )
    from .errors import (
        AlreadyExists,
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        InfraError,
        InfraUnavailable,
        Internal,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unimplemented,
    )
    from .infra import (
        AgentInfra,
        InfraStarter,
        LocalDaemon,
    )
    from .orchestrator import (
        OrchestratorClient,
    )
    from .orchestrator_models import (
        CancelResult,
        HealthStatus,
        Metrics,
        RunStarted,
        SubmitResult,
        SystemEvent,
        TaskPage,
        TaskResult,
        TaskStatus,
        TaskSummary,
        WorkflowCreated,
        WorkflowStatus,
        WorkflowSummary,
    )
    from .shared import (
        ensure_infra,
        ensure_infra_sync,
        shutdown_infra,
        use_infra,
    )

__all__ = [
    "GPU",
    "AgentInfra",
    "AlreadyExists",
    "CancelResult",
    "Cancelled",
    "ConnectionConfig",
    "DeadlineExceeded",
    "Deadlines",
    "EnvManagerClient",
    "FailedPrecondition",
    "HardwareInfo",
    "HealthStatus",
    "HealthUpdate",
    "ImagePullProgress",
    "InfraError",
    "InfraStarter",
    "InfraUnavailable",
    "Internal",
    "InvalidArgument",
    "LocalDaemon",
    "LogEntry",
    "Metrics",
    "NotFound",
    "OrchestratorClient",
    "PermissionDenied",
    "ResourceAvailability",
    "ResourceExhausted",
    "ResourceUsage",
    "RestartServiceResult",
    "RunStarted",
    "ServiceStatus",
    "ServiceStatusUpdate",
    "StopServicesResult",
    "SubmitResult",
    "SystemEvent",
    "TaskExecution",
    "TaskPage",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "Unauthenticated",
    "Unimplemented",
    "WorkflowCreated",
    "WorkflowStatus",
    "WorkflowSummary",
    "ensure_infra",
    "ensure_infra_sync",
    "shutdown_infra",
    "use_infra",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
