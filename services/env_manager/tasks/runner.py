"""ExecuteTask: one-off task containers per workload class, each task id run at most once.

Once per task id: a call for an id that is running waits on the same execution (in this process:
the same asyncio task; across env-manager restarts: the container found by its deterministic name,
followed through its logs). A finished id's result is kept in the TaskStore for the retention window
and returned again, marked cached=true, without running anything.

Once per request, too: a task id is bound to the request that first used it (its request_key:
class, payload, image and the caller's token hash; tasks/payload.py). The same request again (the
orchestrator's retry) joins the run or gets the stored result; any other request with the id is
ALREADY_EXISTS, before anything runs and without any of the stored result.

Cancelling a caller never cancels the execution at once: an orchestrator whose call was cut off
(deadline passed, connection lost) retries the same request and must find the same run (or its
stored result), not a killed one. The execution stores its result and removes its container on
its own. What "stop work whose caller has gone" means here: when the last caller of an execution
has gone (and for a run adopted at start-up, which has none) and no call for the id arrives within
`tasks.abandon_grace`, the work is stopped. A task still waiting for a slot is dropped, nothing
stored (it never ran; a later call runs it); a started container is killed, and its result is
stored with abandoned=true and success=false, so a call after that gets it and the task never
runs twice. abandon_grace = 0 never stops work. The default (5 m) is well beyond the
orchestrator's retry backoff (dispatch.retry_max, 30 s); a retry held back longer than the grace
(its class's slots in the orchestrator all taken) finds the abandoned result.

Only `aclose()` (daemon shutdown) stops waiting without stopping work; it leaves running
containers to the next process, whose `recover()` adopts them. Payload keys and timeout rules are
in tasks/payload.py.

Result map (all strings): exit_code; stdout, stderr (each the first tasks.output_limit_bytes bytes)
with stdout_truncated/stderr_truncated ("true"/"false") and stdout_bytes/stderr_bytes (the full
sizes); container_id, image, workload_class; started_at, finished_at (unix seconds), duration_ms;
timed_out, timeout_s, timeout_capped; cached ("true" when answered from the store); cancelled and
abandoned ("true", only when so). stdout and stderr are capped as UTF-8 text (what the wire
carries), and together so that the whole response stays within the server's max message size
(server.max_message_bytes less a margin); what is cut is marked truncated as above.
success is false for a non-zero exit (error "exit code N") and a timeout (error "timed out ...").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_infra.runtime.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.engine import DockerEngine
from .container import (
    REQUEST_LABEL,
    NameTaken,
    RunRecord,
    container_config,
    container_name,
    create,
    follow_existing,
    inspect,
    remove,
    run_attached,
)
from .output import utf8_prefix
from .payload import TaskSpec, check_class, check_task_id, parse_request
from .store import StoredResult, TaskStore
from .workloads import MIB, TaskSettings, WorkloadClass

log = get_logger("tasks")

# Task containers that still hold a slot: every state short of exited/dead.
ACTIVE_STATES = ["created", "running", "restarting", "paused"]
PRUNE_EVERY_S = 60.0  # bounds the store's size without a write per task
CREATE_ATTEMPTS = 3
DEFAULT_MAX_MESSAGE_BYTES = 4 * MIB
# Kept free of output in every response: the other fields, the framing, and room to spare.
MIN_MESSAGE_MARGIN = 64 * 1024
# A protobuf map entry's framing around its key and value (tags and length varints), at most.
MAP_ENTRY_OVERHEAD = 20
# How often an abandoned run's container is killed again until its run has ended.
ABANDON_KILL_RETRY_S = 1.0


@dataclass(frozen=True)
class TaskOutcome:
    success: bool
    result: dict[str, str]
    error: str
    latency_ms: float  # this call's, from its arrival to its answer


@dataclass(frozen=True)
class _Finished:
    success: bool
    result: dict[str, str]
    error: str
    request_key: str  # the request it is the outcome of


@dataclass
class _Execution:
    workload_class: str
    request_key: str
    # None: an adopted container turned out to have nothing to finish; the caller runs its own.
    task: asyncio.Task[_Finished | None] = field(init=False)
    callers: int = 0  # execute() calls waiting on it now
    started: bool = False  # it holds a slot (its container may exist): killed, not dropped
    abandoned: bool = False
    timer: asyncio.TimerHandle | None = None


class _Slots:
    """A class's concurrency limit, first come first served; adopted runs count without waiting."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    async def acquire(self) -> None:
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over, already counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def occupy(self) -> None:
        self.in_use += 1

    def resize(self, capacity: int) -> None:
        # Runs over the new limit finish; they just free no slot until use is back under it.
        self.capacity = capacity
        self._hand_over()

    def release(self) -> None:
        self.in_use -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.in_use < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_use += 1


class TaskRunner:
    def __init__(self, engine: DockerEngine, stack_name: str,
                 classes: Mapping[str, WorkloadClass], task_settings: TaskSettings,
                 store: TaskStore, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.engine = engine
        self.stack_name = stack_name
        self.classes = dict(classes)
        self.settings = task_settings
        self.store = store
        self._slots = {name: _Slots(workload.concurrency) for name, workload in classes.items()}
        self._inflight: dict[str, _Execution] = {}
        self._removals: set[asyncio.Task[None]] = set()
        self._cancelled: set[str] = set()
        self._abandoned: set[str] = set()
        self._closing = False
        self._last_prune = 0.0
        self.max_message_bytes = max_message_bytes
        self._warn_unprotected_mounts(classes)

    @property
    def _output_budget(self) -> int:
        """The most a response may carry, all fields included: the max message less a margin."""
        size = self.max_message_bytes
        return size - max(MIN_MESSAGE_MARGIN, size // 16)

    @staticmethod
    def _warn_unprotected_mounts(classes: Mapping[str, WorkloadClass]) -> None:
        for name, workload in classes.items():
            for source in workload.unprotected_rw_mounts():
                log.warning("task_mount_not_nosuid", workload_class=name, source=source,
                            reason="an rw mount's host path is best mounted nosuid,nodev on "
                                   "the host (tasks cannot make set-uid root files there, but "
                                   "other writers can)")
    async def execute(self, task_id: str, workload_class: str, payload: Mapping[str, str],
                      timeout_seconds: int, caller: str = "") -> TaskOutcome:
        """Run the task (or join its run, or return its stored result).

        `caller`: the caller's identity (payload.caller_identity of its token; "" without one).
        InvalidArgument: a malformed id, unknown class, bad payload or timeout, or a command that
        cannot start. FailedPrecondition: a disabled class or an image missing on the host.
        AlreadyExists: the id ran (or runs) as another class, or for another request or caller.
        Unavailable: the engine is down, or this env-manager is shutting down (the run goes on;
        a retry attaches to it).
        """
        began = time.perf_counter()
        spec = parse_request(task_id, workload_class, payload, timeout_seconds, self.classes,
                             caller)
        while True:
            execution = self._inflight.get(task_id)
            if execution is not None and execution.task.done() and execution.abandoned:
                # Dropped while queued, its done callback not run yet: start afresh.
                del self._inflight[task_id]
                execution = None
            if execution is None:
                execution = self._launch(
                    task_id, workload_class, spec.request_key,
                    lambda e: self._run(spec, self.classes[workload_class], e))
            elif execution.workload_class != workload_class:
                raise _other_class(task_id, execution.workload_class, workload_class)
            elif execution.request_key != spec.request_key:
                raise _other_request(task_id)
            finished = await self._wait(task_id, execution)
            if finished is not None:
                break
        ran_as = finished.result.get("workload_class", workload_class)
        if ran_as != workload_class:
            raise _other_class(task_id, ran_as, workload_class)
        if finished.request_key != spec.request_key:
            raise _other_request(task_id)
        result = fit_output(finished.result, finished.error, self._output_budget)
        return TaskOutcome(finished.success, result, finished.error,
                           (time.perf_counter() - began) * 1000)

    async def _wait(self, task_id: str, execution: _Execution) -> _Finished | None:
        """Wait on the execution as one of its callers; the last caller gone starts the grace."""
        execution.callers += 1
        if execution.timer is not None:
            execution.timer.cancel()
            execution.timer = None
        try:
            return await asyncio.shield(execution.task)
        except asyncio.CancelledError:
            if execution.task.cancelled() and not _being_cancelled():
                if execution.abandoned:
                    return None  # dropped unstarted just now: this call runs it afresh
                raise Unavailable(f"env-manager is shutting down; task_id {task_id!r} keeps "
                                  "running and a retry will attach to it") from None
            raise
        finally:
            execution.callers -= 1
            if execution.callers == 0 and not execution.task.done():
                self._start_grace(task_id, execution)

    def _start_grace(self, task_id: str, execution: _Execution) -> None:
        grace = self.settings.abandon_grace
        if grace <= 0 or self._closing:
            return
        execution.timer = asyncio.get_running_loop().call_later(
            grace, lambda: self._spawn(self._abandon(task_id, execution)))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _abandon(self, task_id: str, execution: _Execution) -> None:
        """No caller for abandon_grace: drop the task if it waits for a slot, else kill it."""
        execution.timer = None
        if execution.callers or execution.task.done() or self._closing:
            return
        execution.abandoned = True
        grace = self.settings.abandon_grace
        if not execution.started:
            log.warning("task_abandoned", task_id=task_id, state="queued",
                        reason=f"no caller for {grace:g} s")
            execution.task.cancel()
            return
        log.warning("task_abandoned", task_id=task_id, state="running",
                    reason=f"no caller for {grace:g} s; killing its container")
        self._abandoned.add(task_id)
        name = container_name(self.stack_name, task_id)
        while not execution.task.done():
            # Again until its run ends: it may be between its create and its start.
            with contextlib.suppress(NotFound, FailedPrecondition):
                await containers.kill(self.engine, name)
            await asyncio.wait([execution.task], timeout=ABANDON_KILL_RETRY_S)

    def reconfigure(self, classes: Mapping[str, WorkloadClass],
                    task_settings: TaskSettings) -> None:
        """Apply a reloaded config; running tasks keep the class they started with."""
        self.classes = dict(classes)
        self.settings = task_settings
        self.store.retention = task_settings.retention
        self._warn_unprotected_mounts(classes)
        for name, workload in classes.items():
            slots = self._slots.get(name)
            if slots is None:
                self._slots[name] = _Slots(workload.concurrency)
            else:
                slots.resize(workload.concurrency)

    def capacity(self, workload_class: str) -> int:
        return self._workload(workload_class).concurrency

    def queued(self, workload_class: str) -> int:
        """Calls of this class waiting for a free slot in this process."""
        self._workload(workload_class)
        return self._slots[workload_class].waiting

    async def in_use(self, workload_class: str) -> int:
        """Task containers of this class on the engine now (created, running or paused)."""
        self._workload(workload_class)
        filters = self._filters(**{labels.WORKLOAD_CLASS: workload_class})
        filters["status"] = ACTIVE_STATES
        return len(await containers.list_containers(self.engine, filters,
                                                    what="list task containers"))

    async def cancel(self, task_id: str) -> bool:
        """Kill the task's container if it is running; its run then ends and is stored as
        cancelled (so a later ExecuteTask of the id returns that, not a new run)."""
        check_task_id(task_id)
        found = await containers.list_containers(
            self.engine, self._filters(**{labels.TASK_ID: task_id}), what="list task containers")
        killed = False
        for container in found:
            self._cancelled.add(task_id)
            with contextlib.suppress(NotFound, FailedPrecondition):  # it stopped meanwhile
                await containers.kill(self.engine, container.id)
                killed = True
        return killed

    async def recover(self) -> int:
        """Adopt the task containers an earlier env-manager left: finish, store, remove each.

        Call once at startup; returns how many were found. A later execute() of such a task id
        waits for the adopted run (or gets its stored result).
        """
        await self._maybe_prune(force=True)
        found = await containers.list_containers(self.engine, self._filters(),
                                                 what="list task containers")
        adopted = 0
        for container in found:
            task_id = container.labels.get(labels.TASK_ID, "")
            if task_id and task_id not in self._inflight:
                execution = self._launch(
                    task_id, container.labels.get(labels.WORKLOAD_CLASS, ""),
                    container.labels.get(REQUEST_LABEL, ""),
                    self._adopter(task_id, container.id))
                execution.started = True
                # No caller waits on an adopted run: the grace starts now.
                self._start_grace(task_id, execution)
                adopted += 1
        if adopted:
            log.info("task_containers_adopted", count=adopted)
        return adopted

    async def aclose(self) -> None:
        """Stop waiting on executions; running containers are left to the next process."""
        self._closing = True
        for execution in self._inflight.values():
            if execution.timer is not None:
                execution.timer.cancel()
        executions = [execution.task for execution in self._inflight.values()]
        for task in executions:
            task.cancel()
        await asyncio.gather(*executions, return_exceptions=True)
        await asyncio.gather(*self._removals, return_exceptions=True)

    # -- executions ----------------------------------------------------------------------------

    def _launch(self, task_id: str, workload_class: str, request_key: str,
                work: Callable[[_Execution], Coroutine[Any, Any, _Finished | None]]
                ) -> _Execution:
        execution = _Execution(workload_class, request_key)
        execution.task = asyncio.create_task(work(execution), name=f"task {task_id}")
        self._inflight[task_id] = execution

        def done(task: asyncio.Task[_Finished | None]) -> None:
            if self._inflight.get(task_id) is execution:
                del self._inflight[task_id]
            if execution.timer is not None:
                execution.timer.cancel()
            if execution.abandoned:  # normally taken by _finish; not when the run failed
                self._abandoned.discard(task_id)
            if not task.cancelled():
                task.exception()  # retrieved here: every caller may have gone

        execution.task.add_done_callback(done)
        return execution

    async def _run(self, spec: TaskSpec, workload: WorkloadClass,
                   execution: _Execution) -> _Finished:
        # Looked up inside the only execution of this id, so a run that stored its result just
        # before this one began is always seen.
        stored = await self.store.get(spec.task_id)
        if stored is not None:
            return _cached(stored)
        slots = self._slots[spec.workload_class]
        await slots.acquire()
        execution.started = True
        try:
            return await self._run_in_slot(spec, workload)
        finally:
            slots.release()

    async def _run_in_slot(self, spec: TaskSpec, workload: WorkloadClass) -> _Finished:
        name = container_name(self.stack_name, spec.task_id)
        config = container_config(spec, workload, self.stack_name,
                                  self.settings.output_limit_bytes)
        for _ in range(CREATE_ATTEMPTS):
            try:
                container_id = await create(self.engine, config, name)
            except NameTaken:
                # Started by an earlier env-manager process (or a racing one): follow that run.
                info = await inspect(self.engine, name)
                if info is None:
                    continue
                self._check_same_task(info, spec)
                if info["State"]["Status"] == "created":
                    # Its creator died before starting it, and its stdin went with it.
                    await remove(self.engine, info["Id"])
                    continue
                log.info("task_attached", task_id=spec.task_id, container_id=info["Id"])
                return await self._finish(spec.task_id, info["Id"], follow_existing(
                    self.engine, info, self.settings.output_limit_bytes))
            return await self._finish(spec.task_id, container_id, run_attached(
                self.engine, container_id, spec, self.settings.output_limit_bytes))
        raise FailedPrecondition(f"could not create the container for task_id {spec.task_id!r}: "
                                 f"the name {name} stayed taken")

    def _adopter(self, task_id: str, container_id: str
                 ) -> Callable[[_Execution], Coroutine[Any, Any, _Finished | None]]:
        return lambda _execution: self._adopt(task_id, container_id)

    async def _adopt(self, task_id: str, container_id: str) -> _Finished | None:
        stored = await self.store.get(task_id)
        info = await inspect(self.engine, container_id)
        if stored is not None or info is None or info["State"]["Status"] == "created":
            if info is not None:
                await self._remove_shielded(container_id)
            return _cached(stored) if stored is not None else None
        workload_class = (info["Config"].get("Labels") or {}).get(labels.WORKLOAD_CLASS, "")
        slots = self._slots.get(workload_class)
        if slots is not None:
            slots.occupy()
        try:
            return await self._finish(task_id, container_id, follow_existing(
                self.engine, info, self.settings.output_limit_bytes))
        finally:
            if slots is not None:
                slots.release()

    async def _finish(self, task_id: str, container_id: str,
                      run: Coroutine[Any, Any, RunRecord]) -> _Finished:
        """Await the run, store its result, then remove the container (in that order)."""
        try:
            record = await run
        except asyncio.CancelledError:
            log.info("task_detached", task_id=task_id, container_id=container_id)
            raise
        except BaseException:
            await self._remove_shielded(container_id)
            raise
        finished = _finished(record)
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            finished = _Finished(False, {**finished.result, "cancelled": "true"},
                                 "cancelled by request", finished.request_key)
        if task_id in self._abandoned:
            self._abandoned.discard(task_id)
            finished = _Finished(
                False, {**finished.result, "abandoned": "true"},
                f"abandoned: no caller waited for it for {self.settings.abandon_grace:g} s "
                "(tasks.abandon_grace); the container was killed", finished.request_key)
        finished = _Finished(finished.success,
                             fit_output(finished.result, finished.error, self._output_budget),
                             finished.error, finished.request_key)
        # Stored before the container goes: a crash in between leaves a container that the next
        # process removes on seeing the stored result, never a task that runs again.
        await self.store.put(task_id, StoredResult(
            record.workload_class, finished.success, finished.result, finished.error,
            record.finished_at, record.request_key))
        await self._remove_shielded(container_id)
        await self._maybe_prune()
        return finished

    async def _remove_shielded(self, container_id: str) -> None:
        removal = asyncio.create_task(self._remove_logged(container_id))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)
        await asyncio.shield(removal)

    async def _remove_logged(self, container_id: str) -> None:
        try:
            await remove(self.engine, container_id)
        except Exception as exc:
            # recover() at the next start removes what is left.
            log.error("task_container_not_removed", container_id=container_id, error=str(exc))

    async def _maybe_prune(self, *, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            await self.store.prune(now - self.settings.retention)

    # -- helpers -------------------------------------------------------------------------------

    def _workload(self, workload_class: str) -> WorkloadClass:
        return check_class(workload_class, self.classes, allow_disabled=True)

    def _filters(self, **extra: str) -> dict[str, list[str]]:
        return labels.label_filter(**{labels.STACK: self.stack_name,
                                      labels.KIND: labels.KIND_TASK, **extra})

    def _check_same_task(self, info: dict[str, Any], spec: TaskSpec) -> None:
        found = info["Config"].get("Labels") or {}
        if found.get(labels.TASK_ID) != spec.task_id or found.get(labels.STACK) != self.stack_name:
            raise FailedPrecondition(f"container name {info.get('Name', '')!r} is taken by a "
                                     f"container that is not task_id {spec.task_id!r}'s")
        if found.get(labels.WORKLOAD_CLASS) != spec.workload_class:
            raise _other_class(spec.task_id, found.get(labels.WORKLOAD_CLASS, ""),
                               spec.workload_class)
        if found.get(REQUEST_LABEL, "") != spec.request_key:
            raise _other_request(spec.task_id)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _other_class(task_id: str, ran_as: str, asked: str) -> AlreadyExists:
    return AlreadyExists(f"task_id {task_id!r} already ran as workload_class {ran_as!r} "
                         f"(asked for {asked!r}); use a new task_id")


def _other_request(task_id: str) -> AlreadyExists:
    # Nothing about the other request or its result is told.
    return AlreadyExists(f"task_id {task_id!r} is in use by a different request (another "
                         "payload, image or caller); a task id runs one request only: use a "
                         "new task_id")


def _cached(stored: StoredResult) -> _Finished:
    return _Finished(stored.success, {**stored.result, "cached": "true"}, stored.error,
                     stored.request_key)


def fit_output(result: Mapping[str, str], error: str, budget: int) -> dict[str, str]:
    """`result` with stdout and stderr cut (and marked truncated) so that the whole response,
    as UTF-8 on the wire, is at most `budget` bytes; the two share the room left by the rest,
    either one using what the other does not need."""
    fitted = dict(result)
    streams = ("stdout", "stderr")
    rest = len(error.encode("utf-8", "surrogatepass")) + 64  # success, latency, framing
    for key, value in fitted.items():
        rest += MAP_ENTRY_OVERHEAD + len(key.encode()) + (
            0 if key in streams else len(value.encode("utf-8", "surrogatepass")))
    room = max(0, budget - rest)
    sizes = {key: len(fitted.get(key, "").encode("utf-8", "surrogatepass")) for key in streams}
    if sum(sizes.values()) <= room:
        return fitted
    small, large = sorted(streams, key=lambda key: sizes[key])
    caps = {small: min(sizes[small], room // 2)}
    caps[large] = room - caps[small]
    for key in streams:
        text, cut = utf8_prefix(fitted.get(key, ""), caps[key])
        if cut:
            fitted[key] = text
            fitted[f"{key}_truncated"] = "true"
    return fitted


def _finished(record: RunRecord) -> _Finished:
    duration_ms = (record.finished_at - record.started_at) * 1000
    stdout, stdout_cut = record.stdout.render()
    stderr, stderr_cut = record.stderr.render()
    result = {
        "exit_code": str(record.exit_code),
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": _flag(stdout_cut),
        "stderr_truncated": _flag(stderr_cut),
        "stdout_bytes": str(record.stdout.total),
        "stderr_bytes": str(record.stderr.total),
        "container_id": record.container_id,
        "image": record.image,
        "workload_class": record.workload_class,
        "started_at": f"{record.started_at:.3f}",
        "finished_at": f"{record.finished_at:.3f}",
        "duration_ms": f"{duration_ms:.1f}",
        "timed_out": _flag(record.timed_out),
        "timeout_s": f"{record.timeout:g}",
        "timeout_capped": _flag(record.timeout_capped),
        "cached": "false",
    }
    if record.timed_out:
        capped = " (capped at the class's max_timeout)" if record.timeout_capped else ""
        error = f"timed out after {record.timeout:g} s{capped}; the container was killed"
    elif record.exit_code != 0:
        error = f"exit code {record.exit_code}"
    else:
        error = ""
    return _Finished(not error, result, error, record.request_key)


def _flag(value: bool) -> str:
    return "true" if value else "false"
