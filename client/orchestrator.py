"""`OrchestratorClient`: typed async access to the orchestrator (orchestrator.v1), one method
per RPC.

    from agent_infra.client import OrchestratorClient

    async with OrchestratorClient() as orch:         # ORCHESTRATOR_GRPC_ADDR or 127.0.0.1:50052
        submitted = await orch.submit_task("t-1", {"command": ["echo", "hi"]})
        final = await orch.wait_for_task(submitted.task_id, timeout=60)
        print(final.status, final.decoded_result["stdout"])

Payload and input values are sent as they are when they are strings and as JSON otherwise; maps
that come back (a task's result, a run's output) keep the wire's strings, with ``decoded_*``
properties that decode JSON values. Unary calls have a default deadline (``deadlines.read``),
overridable with ``timeout=``; streams have none unless ``timeout=`` is given, and are cancelled
when the caller stops reading. Failures raise the `client.errors` hierarchy.

Retries: every RPC is retried after UNAVAILABLE (see `ORCHESTRATOR`), which is safe only because
each one is idempotent on the wire. The writes are made so: SubmitTask always carries a task id
(the client makes one, ``task-<uuid4 hex>``, when the caller gives none), and a repeated submit of
the same id and content returns the task already stored; StartWorkflowRun always carries an
idempotency key (``key-<uuid4 hex>`` when the caller gives none), so a repeat returns the run the
first attempt started; CreateWorkflow of the same spec keeps its version. A gRPC channel's service
config is fixed per method, not per call, hence the ids are generated here rather than retries
being switched off for calls without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, overload

from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from . import _orchestrator_wire as wire
from ._base import names_tuple
from ._payload import encode_payload
from ._transport import ConnectionConfig, ServiceTarget
from .errors import Cancelled, InfraError, InfraUnavailable
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
from .sandbox import SandboxCalls

__all__ = ["ORCHESTRATOR", "OrchestratorClient", "new_idempotency_key", "new_task_id",
           "orchestrator_client", "reconnect_backoff"]

# Retried on UNAVAILABLE: the reads and streams (gRPC retries a stream only before its first
# message), CancelTask (cancelling twice leaves the task cancelled), and the three writes, made
# idempotent by the ids the client always sends (module docstring); of the sandbox calls, those
# whose repeat does no more (ListSandboxes, GetFile, PutFile; DeleteSandbox answers NOT_FOUND),
# not CreateSandbox (a second sandbox) nor SandboxExec (the command would run again).
ORCHESTRATOR = ServiceTarget(
    display_name="orchestrator",
    grpc_service="orchestrator.v1.OrchestratorService",
    address_env="ORCHESTRATOR_GRPC_ADDR",
    default_address="127.0.0.1:50052",
    retryable_methods=("GetTaskStatus", "StreamTaskResults", "GetMetrics", "StreamEvents",
                       "Health", "ListTasks", "ListWorkflows", "StreamWorkflowStatus",
                       "CancelTask", "SubmitTask", "CreateWorkflow", "StartWorkflowRun",
                       "ListSandboxes", "GetFile", "PutFile", "DeleteSandbox"),
)

#: How long wait_for_task keeps reconnecting to an orchestrator that went away before giving up.
RECONNECT_WINDOW = 30.0
#: The original's variable: the longest pause between reconnect attempts, seconds (default 2.0).
RECONNECT_BACKOFF_ENV = "DSPY_AGENT_RECONNECT_BACKOFF"


def reconnect_backoff() -> float:
    """DSPY_AGENT_RECONNECT_BACKOFF (read now): seconds, > 0; default 2.0."""
    raw = os.environ.get(RECONNECT_BACKOFF_ENV, "").strip()
    if not raw:
        return 2.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{RECONNECT_BACKOFF_ENV}={raw!r}: expected a number of seconds > 0")
    return value


def new_task_id() -> str:
    """A fresh task id, as the client makes one when the caller gives none."""
    return f"task-{uuid.uuid4().hex}"


def new_idempotency_key() -> str:
    """A fresh workflow-run idempotency key, as the client makes one when the caller gives none."""
    return f"key-{uuid.uuid4().hex}"


class OrchestratorClient(SandboxCalls):
    """Client for the orchestrator: tasks, workflows, metrics and events.

    Args:
        address: ``host:port`` to dial. Default: ``config.address``, else the
            ORCHESTRATOR_GRPC_ADDR environment variable (read now), else ``127.0.0.1:50052``.
        config: TLS, token, timeouts and deadlines (`ConnectionConfig`).

    Nothing is dialled until ``async with``, `connect()` or the first call; connecting gives
    up after ``config.connect_timeout`` with `InfraUnavailable`. Close with `close()` (or leave
    the ``async with`` block).
    """

    _target = ORCHESTRATOR
    _sandbox_pb = pb
    _class_field = "task_class"

    def __init__(self, address: str | None = None, *,
                 config: ConnectionConfig | None = None) -> None:
        super().__init__(address, config=config)
        # Longest pause between reconnects in wait_for_task (DSPY_AGENT_RECONNECT_BACKOFF).
        self._reconnect_backoff = reconnect_backoff()

    def _make_stub(self, channel: Any) -> Any:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    def _deadline(self, timeout: float | None) -> float:
        return self._config.deadlines.read if timeout is None else timeout

    # -- tasks ---------------------------------------------------------------------------------

    @overload
    async def submit_task(self, task_id: str, payload: Mapping[str, object], *,
                          task_class: str = ..., priority: int = ..., workflow_id: str | None = ...,
                          timeout_seconds: int = ..., max_attempts: int = ...,
                          timeout: float | None = ...) -> SubmitResult: ...

    @overload
    async def submit_task(self, task_id: str, task_class: str = ...,
                          payload: Mapping[str, object] | None = ..., priority: int = ...,
                          workflow_id: str | None = ..., *, timeout_seconds: int = ...,
                          max_attempts: int = ..., timeout: float | None = ...) -> SubmitResult: ...

    async def submit_task(self, task_id: str, *args: Any, **kwargs: Any) -> SubmitResult:
        """Queue one task; the orchestrator stores it before it answers.

        Two call forms: ours, ``submit_task(task_id, payload, *, task_class=..., priority=...,
        workflow_id=...)``, and the original client's positional order, ``submit_task(task_id,
        task_class, payload, priority, workflow_id)`` (told apart by the second argument: a
        mapping is a payload, a string a class). Keywords work in either. The result is a
        `SubmitResult`, which is also the original's ``{"success", "task_id", "error"}``
        mapping. Unlike the original (which sent ``str(value)``), non-string payload values
        are sent as JSON.

        Args:
            task_id: the task's id (1-128 letters, digits and ``-_.:``). Empty: the client
                makes one (``task-<uuid4 hex>``), returned in the result. Submitting the same
                id with the same content again returns the stored task (safe to retry).
            payload: the task's input. For env-manager classes: ``command`` (a list, or a shell
                string), ``image``, ``env`` (a dict), ``stdin``, ``workdir``; also
                ``timeout_seconds``, ``max_attempts``, ``retry_on_failure``. Strings are sent
                as they are, other values as JSON.
            task_class: cpu_short, cpu_long, gpu, gpu_slurm (or a class the config adds).
            priority: higher runs first within the class.
            workflow_id: the workflow the task belongs to, if any.
            timeout_seconds: the task's time limit; 0: the payload's or the class default.
            max_attempts: executions allowed; 0: the class default.
            timeout: call deadline (default ``deadlines.read``).

        Raises InvalidArgument (bad id, unknown class, bad value), AlreadyExists (the id was
        used for a different task), FailedPrecondition (class disabled), ResourceExhausted
        (queue full or payload too large).
        """
        options = _submit_arguments(args, kwargs)
        request = pb.SubmitTaskRequest(
            id=task_id or new_task_id(), payload=encode_payload(options["payload"] or {}),
            priority=options["priority"], workflow_id=options["workflow_id"] or "",
            timeout_seconds=options["timeout_seconds"], max_attempts=options["max_attempts"],
            **{"class": options["task_class"]})
        return wire.submit_result(
            await self._unary("SubmitTask", request, self._deadline(options["timeout"])))

    async def get_task_status(self, task_id: str, *, timeout: float | None = None
                              ) -> TaskStatus:
        """A task's current state and, once it ended, its result. Raises NotFound."""
        request = pb.GetTaskStatusRequest(task_id=task_id)
        return wire.task_status(
            await self._unary("GetTaskStatus", request, self._deadline(timeout)))

    def stream_task_results(self, task_ids: str | Iterable[str] = (), *,
                            include_completed: bool = False,
                            timeout: float | None = None) -> AsyncIterator[TaskResult]:
        """Each task's state when the stream starts, then every change.

        Args:
            task_ids: the tasks to follow; the stream ends once all of them ended. Empty:
                every task, until the caller stops reading.
            include_completed: also send tasks that had already ended (with no ids: the 1000
                most recent).
            timeout: deadline for the whole stream (default: none).

        Raises NotFound when a named id is unknown.
        """
        request = pb.StreamTaskResultsRequest(task_ids=names_tuple(task_ids),
                                              include_completed=include_completed)
        return self._stream("StreamTaskResults", request, timeout, wire.task_result)

    async def cancel_task(self, task_id: str, *, timeout: float | None = None) -> CancelResult:
        """Cancel a pending or running task (its container is stopped).

        Cancelling again reports success again (the task stays cancelled). A task that had
        already completed or failed is left as it is: ``success`` is False, ``status`` is the
        state it ended in. Raises NotFound for an unknown id.
        """
        request = pb.CancelTaskRequest(task_id=task_id)
        return wire.cancel_result(
            await self._unary("CancelTask", request, self._deadline(timeout)))

    async def list_tasks(self, *, statuses: str | Iterable[str] = (), task_class: str = "",
                         workflow_id: str = "", page_size: int = 100, page_token: str = "",
                         timeout: float | None = None) -> TaskPage:
        """One page of tasks, newest first, filtered by status, class and workflow.

        Args:
            statuses: any of pending, running, completed, failed, cancelled (empty: all).
            page_size: 1-1000 (the server caps larger values at 1000).
            page_token: a previous page's ``next_page_token``.

        Raises InvalidArgument for an unknown status or a token this server did not give out.
        """
        request = pb.ListTasksRequest(statuses=names_tuple(statuses), task_class=task_class,
                                      workflow_id=workflow_id, page_size=page_size,
                                      page_token=page_token)
        return wire.task_page(await self._unary("ListTasks", request, self._deadline(timeout)))

    async def iter_tasks(self, *, statuses: str | Iterable[str] = (), task_class: str = "",
                         workflow_id: str = "", page_size: int = 100,
                         timeout: float | None = None) -> AsyncIterator[TaskSummary]:
        """Every task matching the filters, newest first, fetched a page at a time.

        `timeout` is each page's deadline.
        """
        token = ""
        while True:
            page = await self.list_tasks(statuses=statuses, task_class=task_class,
                                         workflow_id=workflow_id, page_size=page_size,
                                         page_token=token, timeout=timeout)
            for task in page.tasks:
                yield task
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def wait_for_task(self, task_id: str, *, timeout: float | None = None) -> TaskStatus:
        """Wait until a task has ended (completed, failed or cancelled) and return its state.

        Follows the task with StreamTaskResults, reconnecting when the orchestrator restarts
        (for up to RECONNECT_WINDOW seconds in a row). Raises TimeoutError naming the task and
        its last known status after `timeout` seconds (None: no limit), NotFound for an unknown
        id.
        """
        last = ["unknown"]
        if timeout is None:
            return await self._follow_until_done(task_id, last)
        try:
            async with asyncio.timeout(timeout):
                return await self._follow_until_done(task_id, last)
        except TimeoutError:
            raise TimeoutError(f"task {task_id!r} did not finish within {timeout:g} s "
                               f"(last status: {last[0]})") from None

    async def _follow_until_done(self, task_id: str, last: list[str]) -> TaskStatus:
        failing_since: float | None = None
        backoff = 0.1
        while True:
            try:
                async for item in self.stream_task_results(task_id, include_completed=True):
                    failing_since, backoff = None, 0.1
                    last[0] = item.status
                    if item.finished:
                        return item.as_status()
            except (InfraUnavailable, Cancelled):
                # The orchestrator went away (restart, shutdown): it keeps the task; try again.
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if now - failing_since > RECONNECT_WINDOW:
                    raise
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_backoff)

    # -- workflows -----------------------------------------------------------------------------

    async def create_workflow(self, workflow_id: str, spec: Mapping[str, Any] | str | bytes, *,
                              name: str = "", description: str = "",
                              timeout: float | None = None) -> WorkflowCreated:
        """Register a workflow (a DAG of steps, each a task) under `workflow_id`.

        Args:
            spec: ``{"steps": [{"id": "a", "class": "cpu_short", "payload": {...},
                "depends_on": [...], "retries": 0, "timeout_seconds": 0, "priority": 0}]}``
                (or the nodes/edges form), as a mapping, or as JSON text or bytes.

        The same spec again keeps its version; a different one becomes the next version.
        Raises InvalidArgument naming the step and field at fault.
        """
        if isinstance(spec, bytes):
            spec_bytes = spec
        elif isinstance(spec, str):
            spec_bytes = spec.encode()
        else:
            spec_bytes = json.dumps(spec, allow_nan=False, ensure_ascii=False).encode()
        request = pb.CreateWorkflowRequest(id=workflow_id, name=name, description=description,
                                           spec=spec_bytes)
        return wire.workflow_created(
            await self._unary("CreateWorkflow", request, self._deadline(timeout)))

    async def list_workflows(self, *, timeout: float | None = None) -> list[WorkflowSummary]:
        """The latest version of every workflow, by id."""
        return wire.workflow_summaries(
            await self._unary("ListWorkflows", pb.ListWorkflowsRequest(),
                              self._deadline(timeout)))

    async def start_workflow_run(self, workflow_id: str, *, idempotency_key: str = "",
                                 input: Mapping[str, object] | None = None,
                                 timeout: float | None = None) -> RunStarted:
        """Start a run of the workflow's latest version.

        Args:
            idempotency_key: a repeat with the same key returns the run it started
                (``created`` False). Empty: the client makes one (``key-<uuid4 hex>``,
                returned in the result), so a retried call never starts two runs.
            input: the run's input, read by steps as ``{{ input.NAME }}``; strings as they
                are, other values as JSON.

        Raises NotFound for an unknown workflow, AlreadyExists when the key started a run of
        another workflow.
        """
        key = idempotency_key or new_idempotency_key()
        request = pb.StartWorkflowRunRequest(workflow_id=workflow_id, idempotency_key=key,
                                             input=encode_payload(input))
        response = await self._unary("StartWorkflowRun", request, self._deadline(timeout))
        return wire.run_started(response, key)

    def stream_workflow_status(self, run_id: str, *, timeout: float | None = None
                               ) -> AsyncIterator[WorkflowStatus]:
        """A run's state, then each change; ends once the run completed or failed.

        Raises NotFound for an unknown run.
        """
        request = pb.StreamWorkflowStatusRequest(run_id=run_id)
        return self._stream("StreamWorkflowStatus", request, timeout, wire.workflow_status)

    # -- observability -------------------------------------------------------------------------

    async def get_metrics(self, names: str | Iterable[str] | None = (), *,
                          metric_names: str | Iterable[str] | None = None,
                          timeout: float | None = None) -> Metrics:
        """Numeric metrics (all when none named): queue depths, task counts, ...

        `metric_names` is the original's name for `names`. The `Metrics` returned is also a
        mapping of name to value, as the original's dict was.
        """
        chosen = metric_names if metric_names is not None else names
        request = pb.GetMetricsRequest(metric_names=names_tuple(chosen or ()))
        return wire.metrics(await self._unary("GetMetrics", request, self._deadline(timeout)))

    def stream_events(self, event_types: str | Iterable[str] | None = (),
                      since_timestamp: float | datetime | None = None, *,
                      since: float | datetime | None = None,
                      timeout: float | None = None) -> AsyncIterator[SystemEvent]:
        """Events (all types when none named): first those since `since`, then live ones.

        Args:
            event_types: task_submitted, task_started, task_retrying, task_completed,
                task_failed, task_cancelled, workflow_created, workflow_started,
                workflow_step_started, workflow_step_completed, workflow_step_failed,
                workflow_step_skipped, workflow_completed, workflow_failed.
            since: replay the stored events from this time on (unix seconds, or a datetime;
                a naive one is local time), then live ones. None (0 on the wire): live
                events only, no replay; ``since=1`` replays every stored event (within the
                orchestrator's retention).

            since_timestamp: the original's name (and position) for `since`.

        Runs until the caller stops reading. Raises InvalidArgument for an unknown type.
        """
        start = since if since is not None else since_timestamp
        request = pb.StreamEventsRequest(event_types=names_tuple(event_types or ()),
                                         since_timestamp=_since_timestamp(start))
        return self._stream("StreamEvents", request, timeout, wire.system_event)

    async def health(self, timeout: float | None = None) -> HealthStatus:
        """The orchestrator's own view of its health, version and dependencies."""
        return wire.health_status(
            await self._unary("Health", pb.HealthRequest(), self._deadline(timeout)))

    async def health_check(self, timeout: float | None = None) -> dict[str, Any]:
        """The original client's health call: ``{"healthy", "version", "services"}``.

        Never raises because the orchestrator is unreachable or failing: that gives
        ``{"healthy": False, "version": "", "services": {}, "error": "..."}`` (within the
        connect timeout), as the original returned ``{"healthy": False, "error": ...}``.
        """
        try:
            status = await self.health(timeout=timeout)
        except InfraError as exc:
            return {"healthy": False, "version": "", "services": {}, "error": str(exc)}
        return {"healthy": status.healthy, "version": status.version,
                "services": dict(status.services)}


@contextlib.asynccontextmanager
async def orchestrator_client(address: str | None = None, *,
                              config: ConnectionConfig | None = None
                              ) -> AsyncIterator[OrchestratorClient]:
    """``async with orchestrator_client(addr) as client:`` a connected `OrchestratorClient`,
    closed on exit (the original's context manager). Raises InfraUnavailable when nothing
    answers at the address within the connect timeout."""
    client = OrchestratorClient(address, config=config)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


_SUBMIT_DEFAULTS: dict[str, Any] = {
    "payload": None, "task_class": "cpu_short", "priority": 0, "workflow_id": "",
    "timeout_seconds": 0, "max_attempts": 0, "timeout": None}
_ORIGINAL_ORDER = ("task_class", "payload", "priority", "workflow_id")


def _submit_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """submit_task's arguments after task_id, in either call form, by name."""
    unknown = sorted(set(kwargs) - set(_SUBMIT_DEFAULTS))
    if unknown:
        raise TypeError(f"submit_task() got an unexpected keyword argument {unknown[0]!r}")
    if not args:
        names: tuple[str, ...] = ()
    elif isinstance(args[0], Mapping) or args[0] is None:
        if len(args) > 1:
            raise TypeError("submit_task(task_id, payload, ...): the other arguments are "
                            "keyword-only in this form (task_class=, priority=, ...)")
        names = ("payload",)
    elif isinstance(args[0], str):
        if len(args) > len(_ORIGINAL_ORDER):
            raise TypeError("submit_task(task_id, task_class, payload, priority, workflow_id) "
                            f"takes at most 5 positional arguments ({len(args) + 1} given)")
        names = _ORIGINAL_ORDER[:len(args)]
    else:
        raise TypeError("submit_task(): the second argument is a payload mapping or a task "
                        f"class string, not {type(args[0]).__name__}")
    options = dict(_SUBMIT_DEFAULTS)
    for name, value in zip(names, args, strict=True):
        if name in kwargs:
            raise TypeError(f"submit_task() got multiple values for argument {name!r}")
        options[name] = value
    options.update(kwargs)
    if options["payload"] is not None and not isinstance(options["payload"], Mapping):
        raise TypeError("submit_task(): payload must be a mapping of key to value")
    return options


def _since_timestamp(since: float | datetime | None) -> int:
    if since is None:
        return 0
    seconds = since.timestamp() if isinstance(since, datetime) else float(since)
    # Whole seconds on the wire: round down, so no event in the starting second is missed.
    return max(0, math.floor(seconds))
