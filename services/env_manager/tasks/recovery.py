"""Adopting the task containers an earlier env-manager process left (TaskRunner's part).

Only `aclose()` (daemon shutdown) stops waiting without stopping work; it leaves running
containers to the next process, whose `recover()` adopts them: each is followed to its end, its
result stored and the container removed, exactly as if this process had started it.
"""

from __future__ import annotations

import asyncio

from .. import labels
from ..docker import containers
from .abandon import AbandonWatch
from .container import REQUEST_LABEL, follow_existing, inspect
from .core import Work, log
from .results import Finished, cached


class Recovery(AbandonWatch):
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
        await self.warm.aclose()
        for execution in self._inflight.values():
            if execution.timer is not None:
                execution.timer.cancel()
        executions = [execution.task for execution in self._inflight.values()]
        for task in executions:
            task.cancel()
        await asyncio.gather(*executions, return_exceptions=True)
        await asyncio.gather(*self._removals, return_exceptions=True)

    def _adopter(self, task_id: str, container_id: str) -> Work:
        return lambda _execution: self._adopt(task_id, container_id)

    async def _adopt(self, task_id: str, container_id: str) -> Finished | None:
        stored = await self.store.get(task_id)
        info = await inspect(self.engine, container_id)
        if stored is not None or info is None or info["State"]["Status"] == "created":
            if info is not None:
                await self._remove_shielded(container_id)
            return cached(stored) if stored is not None else None
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
                self.warm.wake(workload_class)
