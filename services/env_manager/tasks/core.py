"""TaskRunner's state and the steps every execution shares (tasks/runner.py is the entry point).

An execution is the one asyncio task that runs a task id in this process; `_launch` registers it
in `_inflight` and `_finish` ends it: await the run, store its result, then remove the container,
in that order, so that a crash in between never lets a task id run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_infra.runtime.errors import FailedPrecondition
from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker.engine import DockerEngine
from .container import REQUEST_LABEL, RunRecord, remove
from .payload import TaskSpec, check_class
from .results import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Finished,
    fit_output,
    other_class,
    other_request,
    outcome_of,
    output_budget,
)
from .slots import Slots
from .store import StoredResult, TaskStore
from .warm import WarmPool
from .workloads import TaskSettings, WorkloadClass

log = get_logger("tasks")

PRUNE_EVERY_S = 60.0  # bounds the store's size without a write per task


@dataclass
class Execution:
    workload_class: str
    request_key: str
    # None: an adopted container turned out to have nothing to finish; the caller runs its own.
    task: asyncio.Task[Finished | None] = field(init=False)
    callers: int = 0  # execute() calls waiting on it now
    started: bool = False  # it holds a slot (its container may exist): killed, not dropped
    abandoned: bool = False
    timer: asyncio.TimerHandle | None = None


Work = Callable[[Execution], Coroutine[Any, Any, Finished | None]]


class RunnerCore:
    def __init__(self, engine: DockerEngine, stack_name: str,
                 classes: Mapping[str, WorkloadClass], task_settings: TaskSettings,
                 store: TaskStore, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.engine = engine
        self.stack_name = stack_name
        self.classes = dict(classes)
        self.settings = task_settings
        self.store = store
        self._slots = {name: Slots(workload.concurrency) for name, workload in classes.items()}
        self._inflight: dict[str, Execution] = {}
        self._removals: set[asyncio.Task[None]] = set()
        self._cancelled: set[str] = set()
        self._abandoned: set[str] = set()
        self._closing = False
        self._last_prune = 0.0
        self.max_message_bytes = max_message_bytes
        # Warm containers (tasks/warm.py, tasks/warm_run.py): used once recover() has run.
        self.warm = WarmPool(engine, stack_name, self._busy)
        self.warm.configure(classes, task_settings.output_limit_bytes)
        self.warm.register_owner(self._claimed_ids)
        self._warm_runs: dict[str, str] = {}  # task id -> the warm container running it
        self.recovered = False
        self._warn_unprotected_mounts(classes)

    def _busy(self, workload_class: str) -> int:
        slots = self._slots.get(workload_class)
        return slots.in_use if slots is not None else 0

    async def _claimed_ids(self) -> set[str]:
        """The warm containers handed a task (their claims): the pool's sweeps keep them."""
        return {claim.container_id for claim in await self.store.claims()}

    @property
    def _output_budget(self) -> int:
        """The most a response may carry, all fields included: the max message less a margin."""
        return output_budget(self.max_message_bytes)

    @staticmethod
    def _warn_unprotected_mounts(classes: Mapping[str, WorkloadClass]) -> None:
        for name, workload in classes.items():
            for source in workload.unprotected_rw_mounts():
                log.warning("task_mount_not_nosuid", workload_class=name, source=source,
                            reason="an rw mount's host path is best mounted nosuid,nodev on "
                                   "the host (tasks cannot make set-uid root files there, but "
                                   "other writers can)")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def _launch(self, task_id: str, workload_class: str, request_key: str,
                work: Work) -> Execution:
        execution = Execution(workload_class, request_key)
        execution.task = asyncio.create_task(work(execution), name=f"task {task_id}")
        self._inflight[task_id] = execution

        def done(task: asyncio.Task[Finished | None]) -> None:
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

    def _finalize(self, task_id: str, record: RunRecord) -> Finished:
        """The run's outcome, marked cancelled or abandoned when it was, fitted for the wire."""
        outcome = outcome_of(record)
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            outcome = Finished(False, {**outcome.result, "cancelled": "true"},
                               "cancelled by request", outcome.request_key)
        if task_id in self._abandoned:
            self._abandoned.discard(task_id)
            outcome = Finished(
                False, {**outcome.result, "abandoned": "true"},
                f"abandoned: no caller waited for it for {self.settings.abandon_grace:g} s "
                "(tasks.abandon_grace); the container was killed", outcome.request_key)
        return Finished(outcome.success,
                        fit_output(outcome.result, outcome.error, self._output_budget),
                        outcome.error, outcome.request_key)

    async def _finish(self, task_id: str, container_id: str,
                      run: Coroutine[Any, Any, RunRecord], *,
                      remove_later: bool = False) -> Finished:
        """Await the run, store its result, then remove the container (in that order; with
        `remove_later` the removal goes on after the answer, off the task's path)."""
        try:
            record = await run
        except asyncio.CancelledError:
            log.info("task_detached", task_id=task_id, container_id=container_id)
            raise
        except BaseException:
            await self._remove_shielded(container_id)
            raise
        outcome = self._finalize(task_id, record)
        # Stored before the container goes: a crash in between leaves a container that the next
        # process removes on seeing the stored result, never a task that runs again.
        await self.store.put(task_id, StoredResult(
            record.workload_class, outcome.success, outcome.result, outcome.error,
            record.finished_at, record.request_key))
        if remove_later:
            self._spawn(self._remove_logged(container_id))
        else:
            await self._remove_shielded(container_id)
        await self._maybe_prune()
        return outcome

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
            raise other_class(spec.task_id, found.get(labels.WORKLOAD_CLASS, ""),
                              spec.workload_class)
        if found.get(REQUEST_LABEL, "") != spec.request_key:
            raise other_request(spec.task_id)
