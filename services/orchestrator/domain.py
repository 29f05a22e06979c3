"""The orchestrator's domain in one object: store, scheduler, events, workflows, metrics.

Built when the daemon starts (opening the store and recovering unfinished tasks and runs), torn
down when it stops. Task-result streams are fed from the scheduler's change notifications, each
through a buffer bounded by `limits.subscriber_buffer`: a subscriber that leaves that many
results unread has its buffer freed and its stream ended with RESOURCE_EXHAUSTED ("subscriber
too slow"); it may subscribe again (include_completed gives every task's current state).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent_infra.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from agent_infra.runtime.logs import get_logger
from agent_infra.runtime.parsing import INT64, parse_int
from prometheus_client import CollectorRegistry

from . import tasks_repo
from .compat import queue_summary
from .events import EventHub
from .executors.protocol import Executor
from .executors.routing import build_executor, env_manager_executor, reload_slurm
from .metrics import OrchestratorMetrics
from .model import Task, TaskState
from .sandboxes import SandboxRouter
from .scheduler import Scheduler
from .settings import OrchestratorSettings
from .store import Store
from .workflows.engine import WorkflowEngine

log = get_logger("orchestrator")

RETENTION_INTERVAL = 600.0
# Finished tasks deleted per transaction: a long backlog is pruned in slices so it never holds
# the single writer (and every submit waiting on it) for long.
TASK_PRUNE_BATCH = 500
# With no ids and include_completed, a results stream starts with this many recent finished tasks.
RECENT_COMPLETED = 1000
# ListTasks: the page size when none is asked for, and the most one page holds.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
STATUSES = tuple(state.value for state in TaskState)
FINISHED = tuple(state.value for state in TaskState if state.terminal)


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]  # newest first
    next_page_token: str  # '' on the last page


class _ResultBuffer:
    """One results stream's unread changes, at most `capacity` of them."""

    __slots__ = ("capacity", "overflowed", "queue", "wakeup", "wanted")

    def __init__(self, wanted: set[str], capacity: int) -> None:
        self.wanted = wanted
        self.capacity = capacity
        self.queue: deque[Task] = deque()
        self.wakeup = asyncio.Event()
        self.overflowed = False

    def offer(self, task: Task) -> None:
        if self.overflowed or (self.wanted and task.id not in self.wanted):
            return
        if len(self.queue) >= self.capacity:
            # Free what is held rather than grow: the stream ends at its next read.
            self.overflowed = True
            self.queue.clear()
        else:
            self.queue.append(task)
        self.wakeup.set()

    async def get(self) -> Task:
        while not self.queue:
            if self.overflowed:
                raise ResourceExhausted(
                    f"results subscriber too slow: more than {self.capacity} results were left "
                    "unread; open the stream again (include_completed gives each task's "
                    "current state)")
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.queue.popleft()


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings, store: Store, executor: Executor,
                 registry: CollectorRegistry) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.metrics = OrchestratorMetrics(registry, classes=settings.classes)
        self.scheduler = Scheduler(store, executor, settings.classes, settings.dispatch,
                                   settings.limits, self.metrics)
        self.events = EventHub(store, retention_seconds=settings.events.retention,
                               max_events=settings.events.max_events,
                               queue_size=settings.limits.subscriber_buffer)
        self.workflows = WorkflowEngine(store, self.scheduler, set(settings.classes))
        self.workflows.training_command = tuple(settings.slurm.training_command)
        self.workflows.payload_check = getattr(executor, "check_payload", None)
        env_managers = env_manager_executor(executor)
        self.sandboxes = SandboxRouter(env_managers.clients if env_managers else [])
        self._background: list[asyncio.Task[None]] = []
        self._result_streams: set[_ResultBuffer] = set()

    @classmethod
    async def open(cls, settings: OrchestratorSettings, registry: CollectorRegistry,
                   executor: Executor | None = None) -> Orchestrator:
        store = await Store.open(settings.store.data_dir / "orchestrator.sqlite3")
        if executor is None:
            # env-manager for every class; with [slurm] enabled, gpu_slurm goes to Slurm instead
            # (without it, gpu_slurm submits are refused, saying so).
            executor = build_executor(settings)
        orchestrator = cls(settings, store, executor, registry)
        await orchestrator.workflows.start()
        await orchestrator.scheduler.start()
        await orchestrator.workflows.resume()
        orchestrator._background.append(asyncio.get_running_loop().create_task(
            orchestrator.events.run_retention(RETENTION_INTERVAL)))
        orchestrator._background.append(asyncio.get_running_loop().create_task(
            orchestrator._task_retention()))
        return orchestrator

    async def prune_tasks(self, now: float | None = None) -> int:
        """Delete the tasks that finished over `retention.tasks` before `now` (default: now),
        in batches, except those a live workflow run refers to; returns how many went."""
        cutoff = (time.time() if now is None else now) - self.settings.retention.tasks
        deleted = 0
        while True:
            count = await self.store.write(
                lambda tx: tasks_repo.prune_finished(tx, cutoff, TASK_PRUNE_BATCH))
            deleted += count
            if count < TASK_PRUNE_BATCH:
                return deleted

    async def _task_retention(self) -> None:
        """prune_tasks every `retention.interval`; a failed round is logged, the loop goes on."""
        while True:
            try:
                deleted = await self.prune_tasks()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("tasks_prune_failed", error=str(exc))
            else:
                if deleted:
                    log.info("tasks_pruned", deleted=deleted)
            await asyncio.sleep(self.settings.retention.interval)

    def reconfigure(self, settings: OrchestratorSettings) -> None:
        # Kept as in effect (a refused Slurm change keeps the running [slurm]), so the next
        # reload compares against what really runs.
        slurm = reload_slurm(self.executor, self.settings, settings)
        settings = settings.model_copy(update={"slurm": slurm})
        self.settings = settings
        self.metrics.register_classes(settings.classes)
        self.scheduler.reconfigure(settings.classes)
        self.workflows.known_classes = set(settings.classes)
        self.workflows.training_command = tuple(settings.slurm.training_command)

    async def watch_tasks(self, task_ids: Sequence[str], include_completed: bool
                          ) -> AsyncIterator[Task]:
        """Each task's current state once, then its changes; ends when the named ids are done.

        Raises ResourceExhausted when the consumer leaves more than `limits.subscriber_buffer`
        changes unread (see the module's docstring)."""
        wanted = set(task_ids)
        changes = _ResultBuffer(wanted, self.settings.limits.subscriber_buffer)
        listen = changes.offer
        self.scheduler.listeners.append(listen)
        self._result_streams.add(changes)
        try:
            current = await self._current(task_ids, include_completed)
            # What the first read showed of each task: a change made between subscribing and
            # reading is in both, and is sent once. Only tasks of that read are remembered, and
            # only until they end, so a stream open for days holds nothing per task it saw.
            shown: dict[str, tuple[str, int]] = {}
            open_ids = set(wanted)
            for task in current:
                shown[task.id] = (task.status.value, task.attempts)
                if task.status.terminal:
                    open_ids.discard(task.id)
                if include_completed or not task.status.terminal:
                    yield task
            del current
            while not wanted or open_ids:
                task = await changes.get()
                key = (task.status.value, task.attempts)
                if task.id in shown:
                    if shown[task.id] == key:
                        continue  # already sent (it changed between subscribing and reading)
                    if task.status.terminal:
                        del shown[task.id]
                    else:
                        shown[task.id] = key
                if task.status.terminal:
                    open_ids.discard(task.id)
                yield task
        finally:
            self._result_streams.discard(changes)
            changes.queue.clear()
            with contextlib.suppress(ValueError):
                self.scheduler.listeners.remove(listen)

    def result_buffers(self) -> list[int]:
        """How many unread changes each open results stream holds (observability, tests)."""
        return [len(stream.queue) for stream in self._result_streams]

    async def _current(self, task_ids: Sequence[str], include_completed: bool) -> list[Task]:
        if task_ids:
            found = {t.id: t for t in await self.scheduler.get_many(list(dict.fromkeys(task_ids)))}
            missing = [t for t in task_ids if t not in found]
            if missing:
                raise NotFound(f"unknown task id(s): {', '.join(sorted(set(missing)))[:500]}")
            return [found[t] for t in dict.fromkeys(task_ids)]
        current = await self.store.read(tasks_repo.unfinished)
        if include_completed:
            recent = await self.store.read(lambda conn: tasks_repo.page(
                conn, statuses=FINISHED, task_class="",
                workflow_id="", limit=RECENT_COMPLETED, before_seq=None))
            current.extend(reversed(recent))
        return current

    async def list_tasks(self, *, statuses: Sequence[str] = (), task_class: str = "",
                         workflow_id: str = "", page_size: int = 0, page_token: str = "",
                         id_prefix: str = "", submitted_after: float = 0.0,
                         submitted_before: float = 0.0) -> TaskPage:
        """Stored tasks (without payload and result), newest first, with the given statuses
        (any when none), class and workflow (any when ''); page_token continues where an
        earlier page said to. The web
        console also narrows by `id_prefix` and submit time (after <= submitted_at < before;
        0: unbounded)."""
        wanted = _statuses(statuses)
        limit = _page_limit(page_size)
        before = _page_start(page_token)
        if submitted_after < 0 or submitted_before < 0:
            raise InvalidArgument("submitted_after and submitted_before must be unix seconds "
                                  ">= 0 (0: unbounded)")
        tasks = await self.store.read(lambda conn: tasks_repo.page(
            conn, statuses=wanted, task_class=task_class, workflow_id=workflow_id,
            limit=limit + 1, before_seq=before, id_prefix=id_prefix,
            submitted_after=submitted_after, submitted_before=submitted_before,
            with_result=False))
        more = len(tasks) > limit
        tasks = tasks[:limit]
        return TaskPage(tasks, str(tasks[-1].seq) if more and tasks else "")

    async def queue_status(self) -> dict[str, Any]:
        """Per class: pending and running now, and the stored count of each finished state;
        then the totals of each state over the classes; then the original's keys
        (compat.queue_summary)."""
        stored = await self.store.read(tasks_repo.counts)
        classes: dict[str, dict[str, int]] = {}
        for name, (pending, running) in self.scheduler.queue_depths().items():
            counts = {s: stored.get((name, s), 0) for s in FINISHED}
            classes[name] = {"pending": pending, "running": running, **counts}
        totals = {s: sum(c[s] for c in classes.values()) for s in STATUSES}
        return {"classes": classes, "totals": totals, **queue_summary(totals)}

    async def readiness(self) -> tuple[bool, str]:
        """The one rule for "healthy" (the Health RPC) and "serving" (grpc.health.v1 "" and the
        service's name, /health): the orchestrator accepts and stores work, which needs the
        store alone. With env-manager or Slurm down, tasks wait for it; `health()` reports
        each dependency."""
        try:
            await self.store.check_writable()
        except Exception as exc:
            return False, f"store not writable: {exc}"
        return True, "serving"

    async def health(self) -> dict[str, str]:
        states: dict[str, str] = {}
        try:
            await self.store.check_writable()
            states["store"] = "SERVING"
        except Exception as exc:
            states["store"] = f"NOT_SERVING: {exc}"
        states.update(await self.executor.health())
        return states

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.events.close()
        await self.workflows.stop()
        await self.scheduler.stop()
        await self.executor.close()
        await self.store.close()


def _statuses(statuses: Sequence[str]) -> list[str]:
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise InvalidArgument(f"statuses: unknown {', '.join(unknown)}; use "
                              f"{', '.join(STATUSES)}")
    return list(statuses)


def _page_limit(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument(f"page_size must be 0 (default {DEFAULT_PAGE}) or more")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


def _page_start(page_token: str) -> int | None:
    """The seq a page token continues below (None: from the newest)."""
    if not page_token:
        return None
    try:
        return parse_int(page_token, "page_token", 0, INT64[1])
    except ValueError:
        raise InvalidArgument("page_token is not one this server gave out") from None
