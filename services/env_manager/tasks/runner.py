"""ExecuteTask: one-off task containers per workload class, each task id run at most once.

Once per task id: a call for an id that is running waits on the same execution (in this process:
the same asyncio task; across env-manager restarts: the container found by its deterministic name,
followed through its logs). A finished id's result is kept in the TaskStore for the retention window
and returned again, marked cached=true, without running anything.

Once per request, too: a task id is bound to the request that first used it (its request_key:
class, payload, image and the caller's token hash; tasks/payload.py). The same request again (the
orchestrator's retry) joins the run or gets the stored result; any other request with the id is
ALREADY_EXISTS, before anything runs and without any of the stored result.

Cancelling a caller never cancels the execution at once; work whose callers have all gone is
stopped after `tasks.abandon_grace` (tasks/abandon.py). The default (5 m) is well beyond the
orchestrator's retry backoff (dispatch.retry_max, 30 s); a retry held back longer than the grace
(its class's slots in the orchestrator all taken) finds the abandoned result. Daemon shutdown
leaves running containers to the next process (tasks/recovery.py). Payload keys and timeout rules
are in tasks/payload.py; the result map in tasks/results.py.

The class is split by concern: core.py (state, launching and finishing an execution),
abandon.py (the abandon-grace watcher), recovery.py (adoption at start-up, shutdown), this file
(the entry points), slots.py (per-class concurrency).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from agent_infra.runtime.errors import FailedPrecondition, NotFound

from .. import labels
from ..docker import containers
from .container import (
    NameTaken,
    container_config,
    container_name,
    create,
    follow_existing,
    inspect,
    remove,
    run_attached,
)
from .core import Execution, log
from .payload import TaskSpec, check_task_id, parse_request
from .results import Finished, TaskOutcome, cached, fit_output, other_class, other_request
from .slots import Slots
from .warm_run import WarmRuns
from .workloads import TaskSettings, WorkloadClass

__all__ = ["ACTIVE_STATES", "TaskOutcome", "TaskRunner", "fit_output"]

# Task containers that still hold a slot: every state short of exited/dead.
ACTIVE_STATES = ["created", "running", "restarting", "paused"]
CREATE_ATTEMPTS = 3


class TaskRunner(WarmRuns):
    async def execute(self, task_id: str, workload_class: str, payload: Mapping[str, str],
                      timeout_seconds: int, caller: str = "", *,
                      attempt: int = 0) -> TaskOutcome:
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
                             caller, attempt)
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
                raise other_class(task_id, execution.workload_class, workload_class)
            elif execution.request_key != spec.request_key:
                raise other_request(task_id)
            finished = await self._wait(task_id, execution)
            if finished is not None:
                break
        ran_as = finished.result.get("workload_class", workload_class)
        if ran_as != workload_class:
            raise other_class(task_id, ran_as, workload_class)
        if finished.request_key != spec.request_key:
            raise other_request(task_id)
        result = fit_output(finished.result, finished.error, self._output_budget)
        return TaskOutcome(finished.success, result, finished.error,
                           (time.perf_counter() - began) * 1000)

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
                self._slots[name] = Slots(workload.concurrency)
            else:
                slots.resize(workload.concurrency)
        # Every ready warm container goes; the pools refill per the new config.
        self.warm.configure(classes, task_settings.output_limit_bytes)

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
        warm = sum(1 for task_id in self._warm_runs
                   if (run := self._inflight.get(task_id)) and run.workload_class == workload_class)
        return warm + len(await containers.list_containers(self.engine, filters,
                                                           what="list task containers"))

    async def cancel(self, task_id: str) -> bool:
        """Kill the task's container if it is running; its run then ends and is stored as
        cancelled (so a later ExecuteTask of the id returns that, not a new run)."""
        check_task_id(task_id)
        found = await containers.list_containers(
            self.engine, self._filters(**{labels.TASK_ID: task_id}), what="list task containers")
        killed = False
        warm = self._warm_runs.get(task_id)
        if warm is not None:
            self._cancelled.add(task_id)
            with contextlib.suppress(NotFound, FailedPrecondition):
                await containers.kill(self.engine, warm)
                killed = True
        for container in found:
            self._cancelled.add(task_id)
            with contextlib.suppress(NotFound, FailedPrecondition):  # it stopped meanwhile
                await containers.kill(self.engine, container.id)
                killed = True
        return killed

    # -- executions ----------------------------------------------------------------------------

    async def _run(self, spec: TaskSpec, workload: WorkloadClass,
                   execution: Execution) -> Finished:
        # Looked up inside the only execution of this id, so a run that stored its result just
        # before this one began is always seen.
        stored = await self.store.get(spec.task_id)
        if stored is not None:
            return cached(stored)
        if not self.recovered:
            # An earlier process may have handed it to a warm container, not adopted yet.
            claimed = await self._claimed_run(spec)
            if claimed is not None:
                return claimed
        slots = self._slots[spec.workload_class]
        await slots.acquire()
        execution.started = True
        try:
            return await self._run_in_slot(spec, workload)
        finally:
            slots.release()
            self.warm.wake(spec.workload_class)

    async def _run_in_slot(self, spec: TaskSpec, workload: WorkloadClass) -> Finished:
        warm = await self._run_warm(spec, workload)
        if warm is not None:
            return warm
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
