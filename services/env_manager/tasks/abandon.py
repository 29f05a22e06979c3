"""The abandon-grace watcher: stop work whose callers have all gone (TaskRunner's part).

Cancelling a caller never cancels the execution at once: an orchestrator whose call was cut off
(deadline passed, connection lost) retries the same request and must find the same run (or its
stored result), not a killed one. What "stop work whose caller has gone" means here: when the last
caller of an execution has gone (and for a run adopted at start-up, which has none) and no call
for the id arrives within `tasks.abandon_grace`, the work is stopped. A task still waiting for a
slot is dropped, nothing stored (it never ran; a later call runs it); a started container is
killed, and its result is stored with abandoned=true and success=false, so a call after that gets
it and the task never runs twice. abandon_grace = 0 never stops work.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent_infra.runtime.errors import FailedPrecondition, NotFound, Unavailable

from ..docker import containers
from .container import container_name
from .core import Execution, RunnerCore, log
from .results import Finished

# How often an abandoned run's container is killed again until its run has ended.
ABANDON_KILL_RETRY_S = 1.0


class AbandonWatch(RunnerCore):
    async def _wait(self, task_id: str, execution: Execution) -> Finished | None:
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

    def _start_grace(self, task_id: str, execution: Execution) -> None:
        grace = self.settings.abandon_grace
        if grace <= 0 or self._closing:
            return
        execution.timer = asyncio.get_running_loop().call_later(
            grace, lambda: self._spawn(self._abandon(task_id, execution)))

    async def _abandon(self, task_id: str, execution: Execution) -> None:
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
        while not execution.task.done():
            # Again until its run ends: it may be between its create and its start (or take a
            # warm container meanwhile).
            name = self._warm_runs.get(task_id) or container_name(self.stack_name, task_id)
            with contextlib.suppress(NotFound, FailedPrecondition):
                await containers.kill(self.engine, name)
            await asyncio.wait([execution.task], timeout=ABANDON_KILL_RETRY_S)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
