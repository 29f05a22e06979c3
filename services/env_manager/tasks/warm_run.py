"""Running a task in a warm container (tasks/warm.py), TaskRunner's part.

A task takes a warm container only when one can serve it exactly as a container made for it:
the class's own image, a command given (not the image's default), no per-task mounts, limits,
files, directories or output artifacts, and an argv/env/workdir the hand-over can carry
(handover.fits). Every other task, and every task when the class has no ready warm container, goes
the cold way unchanged.

Effectively once: the claim (task id -> container id, with the labels a cold container would
carry) is stored durably BEFORE the hand-over. A later process adopts a claimed container as the
task's (its output read from the logs, its result stored, then removed), never runs the task
again, and removes every warm container nobody claimed. A container whose stub ended without
running the command (handover.refusal: e.g. a workdir it could not enter, or a restart between
the claim and the hand-over) never ran the task: its claim is dropped and the task runs the cold
way (in this process) or afresh (when adopted).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker.engine import DockerEngine
from .container import (
    REQUEST_LABEL,
    RunRecord,
    _await_exit,
    _cancel,
    _drain,
    _pump,
    container_config,
    follow_existing,
    inspect,
)
from .core import Work
from .handover import fits, refusal
from .output import StreamCapture
from .payload import TaskSpec
from .recovery import Recovery
from .results import Finished, cached, other_class, other_request
from .store import WarmClaim
from .warm import WarmContainer, WarmPool
from .workloads import WorkloadClass

log = get_logger("tasks")

# The stub's own last words are short; a longer stderr is the task's.
REFUSAL_MAX_BYTES = 4096


class HandOverRefused(Exception):
    """The warm container's stub ended without running the command (tasks/handover.py)."""


def warm_fits(spec: TaskSpec, workload: WorkloadClass) -> bool:
    if (spec.image != workload.image or spec.command is None or spec.mounts or spec.files
            or spec.dirs or spec.outputs or spec.nano_cpus is not None
            or spec.memory is not None or spec.gpus is not None):
        return False
    return fits(spec.command, dict(spec.env), spec.workdir) is None


async def run_warm(engine: DockerEngine, pool: WarmPool, container: WarmContainer,
                   spec: TaskSpec, output_limit: int) -> RunRecord:
    """Hand the task over, capture its output, wait (killing it at the timeout): as run_attached
    does for a cold container. HandOverRefused when the command never ran."""
    assert spec.command is not None
    stdout, stderr = StreamCapture(output_limit), StreamCapture(output_limit)
    helpers = [asyncio.create_task(_pump(container.output, stdout, stderr))]
    try:
        started_at = time.time()
        helpers.append(asyncio.create_task(pool.hand_over(
            container, spec.command, dict(spec.env), spec.workdir, spec.stdin)))
        try:
            exit_code, timed_out = await _await_exit(engine, container.id, spec.timeout)
            finished_at = time.time()
            await _drain(helpers[0], container.id)
        finally:
            await _cancel(helpers)
    finally:
        await container.close_streams()
    _check_ran(stderr, container.mark)
    return RunRecord(container.id, spec.workload_class, spec.image, exit_code, stdout, stderr,
                     started_at, finished_at, timed_out, spec.timeout, spec.timeout_capped,
                     spec.request_key, spec.extras, None)


def _check_ran(stderr: StreamCapture, mark: str) -> None:
    if stderr.total <= REFUSAL_MAX_BYTES:
        reason = refusal(stderr.text(), mark)
        if reason is not None:
            raise HandOverRefused(reason)


def claimed_info(info: dict[str, Any], claim: WarmClaim) -> dict[str, Any]:
    """The claimed container's inspect answer as a container made for the task would give it:
    the task's labels, and its start at the claim."""
    config = info["Config"]
    started = datetime.fromtimestamp(claim.claimed_at, UTC).isoformat()
    return {**info, "Config": {**config, "Labels": {**(config.get("Labels") or {}),
                                                    **claim.labels}},
            "State": {**info["State"], "StartedAt": started}}


def _mark_of(info: dict[str, Any]) -> str:
    command = info["Config"].get("Cmd") or []
    return str(command[-1]) if command else ""


class WarmRuns(Recovery):
    async def recover(self) -> int:
        """Adopt what an earlier process left: its task containers, then the warm containers it
        handed a task (by their claims); then the pool removes the rest and starts filling."""
        adopted = await super().recover()
        for claim in await self.store.claims():
            if claim.task_id in self._inflight:
                continue
            info = await inspect(self.engine, claim.container_id)
            if info is None:
                await self.store.unclaim(claim.task_id)
                continue
            execution = self._launch(claim.task_id,
                                     claim.labels.get(labels.WORKLOAD_CLASS, ""),
                                     claim.labels.get(REQUEST_LABEL, ""),
                                     self._claim_adopter(claim, info))
            execution.started = True
            self._start_grace(claim.task_id, execution)
            adopted += 1
        self.recovered = True
        await self.warm.start()
        return adopted

    def _claim_adopter(self, claim: WarmClaim, info: dict[str, Any]) -> Work:
        return lambda _execution: self._adopt_claimed(claim, info)

    async def _adopt_claimed(self, claim: WarmClaim, info: dict[str, Any]) -> Finished | None:
        stored = await self.store.get(claim.task_id)
        if stored is not None:
            await self._remove_shielded(claim.container_id)
            return cached(stored)
        workload_class = claim.labels.get(labels.WORKLOAD_CLASS, "")
        slots = self._slots.get(workload_class)
        if slots is not None:
            slots.occupy()
        self._warm_runs[claim.task_id] = claim.container_id
        log.info("task_attached", task_id=claim.task_id, container_id=claim.container_id,
                 warm=True)

        async def follow() -> RunRecord:
            record = await follow_existing(self.engine, claimed_info(info, claim),
                                           self.settings.output_limit_bytes)
            _check_ran(record.stderr, _mark_of(info))
            return record

        try:
            return await self._finish(claim.task_id, claim.container_id, follow())
        except HandOverRefused:
            await self.store.unclaim(claim.task_id)
            return None  # it never ran: a call for it runs it afresh
        finally:
            self._warm_runs.pop(claim.task_id, None)
            if slots is not None:
                slots.release()
                self.warm.wake(workload_class)

    async def _claimed_run(self, spec: TaskSpec) -> Finished | None:
        """Before recovery is done: the task's claimed warm container, followed, if any."""
        for claim in await self.store.claims(spec.task_id):
            info = await inspect(self.engine, claim.container_id)
            if info is None:
                await self.store.unclaim(spec.task_id)
                return None
            if claim.labels.get(labels.WORKLOAD_CLASS) != spec.workload_class:
                raise other_class(spec.task_id, claim.labels.get(labels.WORKLOAD_CLASS, ""),
                                  spec.workload_class)
            if claim.labels.get(REQUEST_LABEL, "") != spec.request_key:
                raise other_request(spec.task_id)
            return await self._adopt_claimed(claim, info)
        return None

    async def _run_warm(self, spec: TaskSpec, workload: WorkloadClass) -> Finished | None:
        """The task run in a warm container; None when none could take it (go cold)."""
        if not self.recovered or not warm_fits(spec, workload):
            return None
        container = await self.warm.claim(spec.workload_class, spec.image)
        if container is None:
            return None
        task_labels = container_config(spec, workload, self.stack_name,
                                       self.settings.output_limit_bytes)["Labels"]
        try:
            await self.store.claim(WarmClaim(spec.task_id, container.id, task_labels,
                                             time.time()))
        except BaseException:
            self.warm.discard(container)
            raise
        self._warm_runs[spec.task_id] = container.id
        try:
            # The removal is off the answer's path: the result is stored before it either way.
            return await self._finish(spec.task_id, container.id, run_warm(
                self.engine, self.warm, container, spec, self.settings.output_limit_bytes),
                remove_later=True)
        except HandOverRefused as exc:
            log.warning("warm_hand_over_refused", task_id=spec.task_id, reason=str(exc),
                        container_id=container.id)
            await self.store.unclaim(spec.task_id)
            return None
        finally:
            self._warm_runs.pop(spec.task_id, None)
