"""The public API of agent_infra.client, written once: this stub is read by type checkers, and
by lazy_loader.attach_stub in __init__.py, which imports each name from its module on first use
(so the orchestrator daemon can import agent_infra.client.env_manager without AgentInfra or the
CLI). Only `from .module import Name as Name` lines: that is all attach_stub understands, and
`as Name` marks a re-export for mypy."""

from ._transport import ConnectionConfig as ConnectionConfig
from ._transport import Deadlines as Deadlines
from .env_manager import EnvManagerClient as EnvManagerClient
from .env_manager_models import GPU as GPU
from .env_manager_models import HardwareInfo as HardwareInfo
from .env_manager_models import HealthUpdate as HealthUpdate
from .env_manager_models import ImagePullProgress as ImagePullProgress
from .env_manager_models import LogEntry as LogEntry
from .env_manager_models import ResourceAvailability as ResourceAvailability
from .env_manager_models import ResourceUsage as ResourceUsage
from .env_manager_models import RestartServiceResult as RestartServiceResult
from .env_manager_models import ServiceStatus as ServiceStatus
from .env_manager_models import ServiceStatusUpdate as ServiceStatusUpdate
from .env_manager_models import StopServicesResult as StopServicesResult
from .env_manager_models import TaskExecution as TaskExecution
from .errors import AlreadyExists as AlreadyExists
from .errors import Cancelled as Cancelled
from .errors import DeadlineExceeded as DeadlineExceeded
from .errors import FailedPrecondition as FailedPrecondition
from .errors import InfraError as InfraError
from .errors import InfraUnavailable as InfraUnavailable
from .errors import Internal as Internal
from .errors import InvalidArgument as InvalidArgument
from .errors import NotFound as NotFound
from .errors import PermissionDenied as PermissionDenied
from .errors import ResourceExhausted as ResourceExhausted
from .errors import Unauthenticated as Unauthenticated
from .errors import Unimplemented as Unimplemented
from .infra import AgentInfra as AgentInfra
from .infra import InfraStarter as InfraStarter
from .infra import LocalDaemon as LocalDaemon
from .orchestrator import OrchestratorClient as OrchestratorClient
from .orchestrator import orchestrator_client as orchestrator_client
from .orchestrator_models import CancelResult as CancelResult
from .orchestrator_models import HealthStatus as HealthStatus
from .orchestrator_models import Metrics as Metrics
from .orchestrator_models import RunStarted as RunStarted
from .orchestrator_models import SubmitResult as SubmitResult
from .orchestrator_models import SystemEvent as SystemEvent
from .orchestrator_models import TaskPage as TaskPage
from .orchestrator_models import TaskResult as TaskResult
from .orchestrator_models import TaskStatus as TaskStatus
from .orchestrator_models import TaskSummary as TaskSummary
from .orchestrator_models import WorkflowCreated as WorkflowCreated
from .orchestrator_models import WorkflowStatus as WorkflowStatus
from .orchestrator_models import WorkflowSummary as WorkflowSummary
from .sandbox import ExecChunk as ExecChunk
from .sandbox import ExecResult as ExecResult
from .sandbox import Sandbox as Sandbox
from .sandbox import SandboxInfo as SandboxInfo
from .shared import ensure_infra as ensure_infra
from .shared import ensure_infra_sync as ensure_infra_sync
from .shared import shutdown_infra as shutdown_infra
from .shared import use_infra as use_infra
