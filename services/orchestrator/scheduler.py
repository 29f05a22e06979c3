"""The task queue: per-class priority queues, concurrency limits, dispatch, retries, recovery.

Each class has its own queue (priority first, then submit order) and its own dispatch loop, so a
full class never holds another back. A task is stored before its submit is acknowledged; at start
the store's unfinished tasks are queued again, running ones included: they are re-dispatched under
the same execution id, which env-manager attaches to instead of running a second container.
Whatever happens to one task (its failure, an executor error, a bug) ends that task only.

Pending tasks stay on disk until dispatch: a queue holds only (priority, seq, id) of each task
waiting in it, and the task's row is read back when it is dispatched (its payload by the write
marking it running). A task has an in-memory record only from its dispatch to its end (and
while it waits for a retry), so a backlog of 100,000 tasks costs the store's disk and about
200 bytes of memory a task, whatever their payloads.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent_infra.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from agent_infra.runtime.logs import get_logger
from agent_infra.runtime.parsing import INT32, parse_int, truthy

from . import tasks_repo
from .executors.protocol import CONTROL_KEYS, Execution, Executor, TransientFailure
from .metrics import OrchestratorMetrics
from .model import DEFAULT_CLASS, TASK_ID_PATTERN, Task, TaskRequest, TaskState
from .settings import ClassSettings, DispatchSettings, LimitSettings
from .store import Store

# After an unexpected error in a class's dispatch loop, wait this long before the next round.
DISPATCH_ERROR_PAUSE = 1.0
log = get_logger("scheduler")

TaskListener = Callable[[Task], None]


@dataclass
class ClassQueue:
    name: str
    settings: ClassSettings
    heap: list[tuple[int, int, str]] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)
    running: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, priority: int, seq: int, task_id: str) -> None:
        heapq.heappush(self.heap, (-priority, seq, task_id))
        self.queued.add(task_id)
        # A class at its limit is woken by the completion that frees a slot; waking its loop
        # for every submit into a backlog would only make it look and sleep again.
        if self.running < self.settings.concurrency:
            self.wake.set()

    def pop(self, count: int) -> list[str]:
        """Up to `count` task ids, best first."""
        popped: list[str] = []
        while self.heap and len(popped) < count:
            _, _, task_id = heapq.heappop(self.heap)
            if task_id in self.queued:
                self.queued.discard(task_id)
                popped.append(task_id)
        return popped

    @property
    def can_dispatch(self) -> bool:
        return bool(self.queued) and self.running < self.settings.concurrency


class Scheduler:
    def __init__(self, store: Store, executor: Executor, classes: Mapping[str, ClassSettings],
                 dispatch: DispatchSettings, limits: LimitSettings,
                 metrics: OrchestratorMetrics) -> None:
        self._store = store
        self._executor = executor
        self._queues = {name: ClassQueue(name, s) for name, s in classes.items()}
        self._dispatch = dispatch
        self._limits = limits
        self._metrics = metrics
        metrics.watch_queues(self.queue_depths)
        # Every task from its dispatch to its end (retry waits included), payload left on disk;
        # a task still waiting for its first dispatch is only in its queue.
        self._live: dict[str, Task] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._seq = 0
        self.listeners: list[TaskListener] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> int:
        """Queue what the store holds unfinished; returns how many tasks were recovered."""
        self._seq = await self._store.read(tasks_repo.max_seq)
        recovered = await self._store.read(tasks_repo.unfinished_keys)
        running = {key.id for key in recovered if key.status == TaskState.RUNNING.value}
        orphans = {key.id for key in recovered if key.task_class not in self._queues}
        for task in await self._store.read(
                lambda conn: tasks_repo.get_many(conn, sorted(running | orphans))):
            if task.id in orphans:
                await self._finish(task, TaskState.FAILED, {},
                                   f"class {task.task_class!r} is no longer configured")
            else:
                self._live[task.id] = task
        for key in recovered:
            if key.id not in orphans:
                self._queues[key.task_class].push(key.priority, key.seq, key.id)
        for queue in self._queues.values():
            self._loops.append(asyncio.get_running_loop().create_task(self._dispatch_loop(queue)))
        if recovered:
            log.info("tasks_recovered", count=len(recovered))
        return len(recovered)

    async def stop(self) -> None:
        """Stop dispatching; running executions are left to finish on their backends."""
        for task in [*self._loops, *self._runs.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._runs.values(), return_exceptions=True)

    def reconfigure(self, classes: Mapping[str, ClassSettings]) -> None:
        """New limits apply at once; a class removed from config keeps draining what it has."""
        for name, settings in classes.items():
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = ClassQueue(name, settings)
                self._loops.append(
                    asyncio.get_running_loop().create_task(self._dispatch_loop(queue)))
            queue.settings = settings
            queue.wake.set()

    # -- submit, cancel, read ------------------------------------------------------------------

    async def submit(self, request: TaskRequest, *, run_id: str = "", step_id: str = ""
                     ) -> tuple[Task, bool]:
        request = self._validated(request)
        # The class's payload contract, as its executor knows it (executors/contracts.py):
        # an optional hook, so executors without contracts need not define it.
        check = getattr(self._executor, "check_payload", None)
        if check is not None:
            await check(request.task_class, request.payload)
        queue = self._queues[request.task_class]
        self._seq += 1
        seq = self._seq
        known = request.id in queue.queued or request.id in self._live
        if not known and len(queue.queued) >= queue.settings.max_backlog:
            raise ResourceExhausted(
                f"class {request.task_class!r} has {len(queue.queued)} pending tasks, its "
                f"max_backlog; retry later")
        submitted = await self._store.write(
            lambda tx: tasks_repo.insert(tx, request, seq, run_id, step_id))
        task = submitted.task
        if submitted.created:
            queue.push(task.priority, task.seq, task.id)  # the row waits on disk (docstring)
            self._metrics.submitted(task.task_class)
            self._notify(task)
        return task, submitted.created

    def _validated(self, request: TaskRequest) -> TaskRequest:
        if not request.id:
            request = replace(request, id=f"task-{uuid.uuid4().hex}")
        elif not TASK_ID_PATTERN.fullmatch(request.id):
            raise InvalidArgument("id must be 1-128 characters of letters, digits and - _ . : ; "
                                  f"got {request.id!r:.140}")
        if not request.task_class:
            request = replace(request, task_class=DEFAULT_CLASS)
        if request.task_class not in self._queues:
            raise InvalidArgument(f"class {request.task_class!r:.40} is unknown; known classes: "
                                  f"{', '.join(sorted(self._queues))}")
        if reason := self._executor.supports(request.task_class):
            raise FailedPrecondition(reason)
        size = sum(len(k) + len(v) for k, v in request.payload.items())
        if size > self._limits.max_payload_bytes:
            raise ResourceExhausted(f"payload is {size} bytes; the limit is "
                                    f"{self._limits.max_payload_bytes}")
        try:
            # ASCII digits in range, checked here: "²" or 5,000 digits never reach dispatch.
            for key in ("timeout_seconds", "max_attempts"):
                if key in request.payload:
                    parse_int(request.payload[key], f"payload.{key}", 0, INT32[1])
            parse_int(request.priority, "priority", *INT32)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if request.timeout_seconds < 0 or request.max_attempts < 0:
            raise InvalidArgument("timeout_seconds and max_attempts must be 0 (default) or more")
        return request

    async def cancel(self, task_id: str) -> Task:
        task = self._live.get(task_id)
        if task is None:
            stored = await self.get(task_id)  # NotFound when there is no such task
            if stored.status.terminal:
                return stored
            # Waiting for its first dispatch (or dispatched while it was being read).
            task = self._live.get(task_id, stored)
        # A task back in the queue after a transient dispatch failure may still be running on
        # the backend under the same execution id (the failure may have been the reply's).
        was_dispatched = (task.status is TaskState.RUNNING or task.attempts > 0
                          or task_id in self._runs)
        await self._finish(task, TaskState.CANCELLED, {}, "cancelled by request")
        self._queues[task.task_class].queued.discard(task_id)
        run = self._runs.get(task_id)
        if run is not None:
            run.cancel()
        if was_dispatched:
            # Frees the backend's slot now rather than when the command would have ended.
            await self._executor.cancel(task.execution_id, task.task_class)
        return task

    async def get(self, task_id: str) -> Task:
        live = self._live.get(task_id)
        if live is not None:
            return live.snapshot()
        found = await self._store.read(lambda conn: tasks_repo.get(conn, task_id))
        if found is None:
            raise NotFound(f"task {task_id!r:.140} not found")
        return found

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        stored = await self._store.read(lambda conn: tasks_repo.get_many(conn, list(task_ids)))
        return [self._live[t.id].snapshot() if t.id in self._live else t for t in stored]

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """class -> (pending, running) right now."""
        return {name: (len(q.queued), q.running) for name, q in self._queues.items()}

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch_loop(self, queue: ClassQueue) -> None:
        while True:
            try:
                await self._dispatch_next(queue)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug (or an executor error) must not end this class's dispatch for good.
                log.exception("dispatch_loop_error", task_class=queue.name)
                await asyncio.sleep(DISPATCH_ERROR_PAUSE)

    async def _dispatch_next(self, queue: ClassQueue) -> None:
        while not queue.can_dispatch:
            queue.wake.clear()
            await queue.wake.wait()
        await self._executor.wait_until_available(queue.name)
        task_ids = queue.pop(queue.settings.concurrency - queue.running)
        first = [task_id for task_id in task_ids if task_id not in self._live]
        if first:
            # Their first dispatch: the rows are read back now, in one read (no payloads).
            for task in await self._store.read(lambda conn: tasks_repo.get_many(conn, first)):
                if not task.status.terminal:  # else cancelled while it waited
                    self._live.setdefault(task.id, task)
        for task_id in task_ids:
            live = self._live.get(task_id)
            if live is None or task_id in self._runs:
                continue
            queue.running += 1
            self._runs[task_id] = asyncio.get_running_loop().create_task(self._run(live, queue))

    async def _run(self, task: Task, queue: ClassQueue) -> None:
        requeue_after: float | None = None
        try:
            requeue_after = await self._attempt(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug in one task's path must not stop the scheduler: that task fails, with why.
            log.exception("task_crashed", task_id=task.id)
            await self._finish(task, TaskState.FAILED, {}, f"internal error: {exc}")
        finally:
            self._runs.pop(task.id, None)
            queue.running -= 1
            queue.wake.set()
        if requeue_after is not None and task.id in self._live:
            asyncio.get_running_loop().call_later(requeue_after, self._requeue, task)

    def _requeue(self, task: Task) -> None:
        if task.id in self._live and task.status is TaskState.PENDING:
            self._queues[task.task_class].push(task.priority, task.seq, task.id)

    async def _attempt(self, task: Task) -> float | None:
        """Run one dispatch of the task; the delay before it is queued again, or None."""
        # A task found running after a restart resumes the same attempt: not a new one.
        attempt = task.attempts if task.status is TaskState.RUNNING else task.attempts + 1
        now = time.time()
        payload = await self._store.write(
            lambda tx: tasks_repo.mark_running(tx, task.id, attempt, now))
        if payload is None:
            # Ended meanwhile (a cancel that read the row before this dispatch did).
            if self._live.get(task.id) is task:
                del self._live[task.id]
            return None
        waited = now - task.submitted_at
        # The same instant as stored, so a stream and a later read agree to the microsecond.
        task.status, task.attempts, task.started_at = TaskState.RUNNING, attempt, now
        self._metrics.started(task.task_class, waited)
        self._notify(task)
        execution = Execution(task.execution_id, task.task_class, _dispatch_payload(payload),
                              self._timeout(task, payload), attempt)
        max_attempts = self._max_attempts(task, payload)
        retry_on_failure = truthy(payload.get("retry_on_failure", ""))
        del payload  # held by the execution while it runs, then nowhere
        try:
            outcome = await self._executor.execute(execution)
        except TransientFailure as exc:
            if attempt >= max_attempts:
                await self._finish(task, TaskState.FAILED, {},
                                   f"gave up after {attempt} attempts: {exc}")
                return None
            return await self._retry(task, str(exc), new_execution=False)
        except DomainError as exc:
            await self._finish(task, TaskState.FAILED, {}, str(exc))
            return None
        if outcome.success:
            await self._finish(task, TaskState.COMPLETED, outcome.result, "")
            return None
        if retry_on_failure and attempt < max_attempts:
            return await self._retry(task, outcome.error, new_execution=True)
        await self._finish(task, TaskState.FAILED, outcome.result, outcome.error)
        return None

    async def _retry(self, task: Task, reason: str, *, new_execution: bool) -> float:
        base = self._dispatch.retry_initial * 2 ** max(0, task.attempts - 1)
        delay: float = min(base, self._dispatch.retry_max) * random.uniform(0.5, 1.0)
        if await self._store.write(lambda tx: tasks_repo.mark_retrying(
                tx, task.id, task.attempts, reason, delay, new_execution=new_execution)):
            task.status, task.error = TaskState.PENDING, reason
            task.execution += int(new_execution)
            self._metrics.retried(task.task_class)
            self._notify(task)
        return delay

    async def _finish(self, task: Task, status: TaskState, result: dict[str, str],
                      error: str) -> None:
        now = time.time()
        changed = await self._store.write(
            lambda tx: tasks_repo.finish(tx, task.id, status, result, error, now))
        if not changed:
            return
        task.status, task.result, task.error = status, result, error
        task.finished_at = now
        self._live.pop(task.id, None)
        self._metrics.finished(task.task_class, status.value, task.duration_ms / 1000)
        self._notify(task)

    def _timeout(self, task: Task, payload: Mapping[str, str]) -> int:
        default = int(self._queues[task.task_class].settings.default_timeout)
        return _task_setting(payload, task.timeout_seconds, "timeout_seconds",
                             _execution_timeout(payload) or default)

    def _max_attempts(self, task: Task, payload: Mapping[str, str]) -> int:
        return _task_setting(payload, task.max_attempts, "max_attempts",
                             self._queues[task.task_class].settings.max_attempts)

    def _notify(self, task: Task) -> None:
        if not self.listeners:
            return
        snapshot = task.snapshot()
        for listener in list(self.listeners):
            try:
                listener(snapshot)
            except Exception:
                # One listener's bug (a stream, the workflow engine) is not the task's.
                log.exception("task_listener_error", task_id=task.id)


def _task_setting(payload: Mapping[str, str], requested: int, control_key: str,
                  class_default: int) -> int:
    """The request's own value when set, else the payload's control key's, else the class's."""
    if requested > 0:
        return requested
    try:
        value = parse_int(payload.get(control_key, ""), control_key, 1, INT32[1])
    except ValueError:
        return class_default
    return value


def _execution_timeout(payload: Mapping[str, str]) -> int:
    """An `execution` section's timeout_seconds (the original runner's payload), else 0."""
    text = payload.get("execution")
    if not text:
        return 0
    try:
        value = json.loads(text).get("timeout_seconds")
    except (ValueError, RecursionError, AttributeError):
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return 0
    return min(math.ceil(value), INT32[1])


def _dispatch_payload(payload: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in payload.items() if k not in CONTROL_KEYS}
