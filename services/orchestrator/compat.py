"""What the original stack's callers read beyond the wire, from the same state as everything else.

GetMetrics names (ORIGINAL_METRICS; README "Metrics the original's callers read" says each
meaning): answered with or without our own names, `*` prefixes included. /queue/status keys
(`queue_summary`). The Slurm job of a gpu_slurm task (`slurm_job`, GET /slurm/status/{task_id};
`slurm_job_id` for POST /queue/submit). The Health RPC's `services` entries `orchestrator` and
`grpc_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent_infra.runtime.errors import InvalidArgument, NotFound

from . import tasks_repo
from .executors.routing import slurm_executor
from .executors.slurm.payload import SLURM_CLASS
from .model import TaskState

if TYPE_CHECKING:
    from .domain import Orchestrator

ORIGINAL_METRICS = (
    "tasks_tracked_total", "tasks_pending", "tasks_running", "tasks_completed", "queue_depth",
    "workflows_total", "env_queue_depth", "gpu_wait_seconds", "env_error_rate",
    "runner_gpu_total", "orchestrator_concurrency_limit", "orchestrator_inflight_tasks",
    "queue_tasks_submitted_total", "queue_tasks_processed_total", "queue_tasks_completed_total",
    "events_published_total", "slurm_jobs_submitted_total", "slurm_jobs_completed_total",
    "slurm_jobs_failed_total",
)
FINISHED = tuple(state.value for state in TaskState if state.terminal)
# How often slurm_job_id looks for the job id sbatch gave.
JOB_ID_POLL = 0.1


def gpu_classes(classes: Sequence[str]) -> list[str]:
    """The classes that run on GPUs: `gpu`, `gpu_slurm`, and any other named gpu*."""
    return [name for name in classes if name.startswith("gpu")]


def _workflow_count(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COUNT(DISTINCT id) FROM workflows").fetchone()
    return int(row[0]) if row else 0


async def original_figures(orch: Orchestrator) -> dict[str, float]:
    """Every name of ORIGINAL_METRICS with its figure now."""
    stored = await orch.store.read(tasks_repo.counts)
    workflows = await orch.store.read(_workflow_count)
    depths = orch.scheduler.queue_depths()
    pending = sum(p for p, _ in depths.values())
    running = sum(r for _, r in depths.values())
    slurm = slurm_executor(orch.executor)
    env_classes = [c for c in depths if slurm is None or c != SLURM_CLASS]
    completed = orch.metrics.counts("completed")
    failed = orch.metrics.counts("failed")
    cancelled = orch.metrics.counts("cancelled")
    env_done = sum(completed.get(c, 0.0) + failed.get(c, 0.0) for c in env_classes)
    classes = orch.settings.classes
    figures = {
        "tasks_tracked_total": sum(stored.values()),
        "tasks_pending": pending,
        "tasks_running": running,
        "tasks_completed": sum(n for (_, s), n in stored.items() if s == "completed"),
        "queue_depth": pending,
        "workflows_total": workflows,
        "env_queue_depth": sum(depths[c][0] for c in env_classes),
        "gpu_wait_seconds": orch.metrics.mean_wait(gpu_classes(list(depths))),
        "env_error_rate": (sum(failed.get(c, 0.0) for c in env_classes) / env_done
                           if env_done else 0.0),
        "runner_gpu_total": sum(classes[c].concurrency for c in gpu_classes(list(classes))),
        "orchestrator_concurrency_limit": sum(c.concurrency for c in classes.values()),
        "orchestrator_inflight_tasks": running,
        "queue_tasks_submitted_total": sum(orch.metrics.counts("submitted").values()),
        "queue_tasks_processed_total": sum(completed.values()) + sum(failed.values())
        + sum(cancelled.values()),
        "queue_tasks_completed_total": sum(completed.values()),
        "events_published_total": orch.events.published,
        "slurm_jobs_submitted_total": slurm.jobs_submitted if slurm else 0,
        "slurm_jobs_completed_total": slurm.jobs_completed if slurm else 0,
        "slurm_jobs_failed_total": slurm.jobs_failed if slurm else 0,
    }
    return {name: float(value) for name, value in figures.items()}


async def select_metrics(orch: Orchestrator, names: Sequence[str]) -> dict[str, float]:
    """GetMetrics: ours (metrics.py's names and filters) and the original's; none asked: all.
    A name that is neither (an exact one, or a prefix that matches neither) is InvalidArgument."""
    original = await original_figures(orch)
    if not names:
        return {**orch.metrics.snapshot(), **original}
    ours: list[str] = []
    selected: dict[str, float] = {}
    for name in names:
        if name in original:
            selected[name] = original[name]
        elif name.endswith("*") and any(key.startswith(name[:-1]) for key in original):
            selected.update((k, v) for k, v in original.items() if k.startswith(name[:-1]))
            with contextlib.suppress(InvalidArgument):  # a prefix of the original's alone
                selected.update(orch.metrics.snapshot([name]))
        else:
            ours.append(name)
    if ours:
        try:
            selected.update(orch.metrics.snapshot(ours))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{exc}; and the original's names: "
                                  f"{', '.join(ORIGINAL_METRICS)}") from None
    return selected


def queue_summary(totals: Mapping[str, int]) -> dict[str, int]:
    """The original's /queue/status keys from the stored totals per state: pending (waiting
    now), done (finished: completed, failed or cancelled), submitted (every task stored),
    processed (taken off the queue: running or finished), completed (finished successfully)."""
    done = sum(totals.get(state, 0) for state in FINISHED)
    running = totals.get("running", 0)
    pending = totals.get("pending", 0)
    return {"pending": pending, "done": done, "submitted": pending + running + done,
            "processed": running + done, "completed": totals.get("completed", 0)}


def health_services(states: Mapping[str, str], serving: bool, reason: str) -> dict[str, str]:
    """The Health RPC's `services`: each dependency's state, and the original's entries."""
    return {**states, "orchestrator": "healthy" if serving else f"unhealthy: {reason}",
            "grpc_server": "healthy"}


async def slurm_job_id(orch: Orchestrator, task_id: str, wait: float) -> str:
    """The Slurm job id of a gpu_slurm task, waiting up to `wait` s for sbatch to answer
    (the task may be queued behind the class's concurrency, or the controller down): ''
    when it has none by then."""
    slurm = slurm_executor(orch.executor)
    if slurm is None:
        return ""
    deadline = time.monotonic() + wait
    while True:
        task = await orch.scheduler.get(task_id)
        if job_id := await slurm.recorded_job_id(task.execution_id):
            return job_id
        if task.status.terminal or time.monotonic() >= deadline:
            return task.result.get("job_id", "")
        await asyncio.sleep(JOB_ID_POLL)


async def slurm_job(orch: Orchestrator, task_id: str) -> dict[str, Any]:
    """GET /slurm/status/{task_id}: the task's Slurm job record (executors/slurm/status.py),
    with task_id, task_status and slurm_job_id; job_id None and state "QUEUED" while the task
    waits for its sbatch. NotFound for an unknown task or one that is not gpu_slurm."""
    task = await orch.scheduler.get(task_id)
    if task.task_class != SLURM_CLASS:
        raise NotFound(f"task {task_id!r:.140} is a {task.task_class} task, not {SLURM_CLASS}: "
                       "it has no Slurm job")
    slurm = slurm_executor(orch.executor)
    record = await slurm.job_status(task.execution_id) if slurm is not None else None
    if record is None and task.result.get("job_id"):
        # Slurm (or its executor) is gone; what the task recorded of its job remains.
        exit_code = task.result.get("exit_code", "")
        record = {"job_id": task.result["job_id"], "state": task.result.get("state", ""),
                  "exit_code": int(exit_code) if exit_code.lstrip("-").isdigit() else None,
                  "source": "task_result"}
    if record is None:
        state = "NEVER_SUBMITTED" if task.status.terminal else "QUEUED"
        record = {"job_id": None, "state": state, "source": "orchestrator"}
    return {"task_id": task.id, "task_status": task.status.value, "error": task.error,
            "slurm_job_id": record["job_id"], **record}
