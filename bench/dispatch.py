"""Dispatch: queued no-op tasks drained through the scheduler, its store and an in-process executor.

    .venv/bin/python bench/dispatch.py [--tasks 10000] [--concurrency 64] [--rounds 3]
        [--submitters 50] [--skip-daemon] [--strict]

OURS runs in this process: the real Orchestrator (scheduler, SQLite store in a temp dir with WAL,
synchronous=FULL and group commits, event hub, workflow engine, metrics on a private registry),
built by Orchestrator.open with an InProcessExecutor whose handler returns success at once.
One class, cpu_short. Each round, on a fresh store:
  submit  --tasks Scheduler.submit calls from --submitters concurrent coroutines while the class
          has concurrency 0, so nothing starts: the submit cost, on its own.
  drain   the class's concurrency goes to --concurrency through Orchestrator.reconfigure (the
          SIGHUP path), and the clock runs until the scheduler has reported every task completed
          (a scheduler listener counts them). Each task costs the scheduler two durable writes
          (running, then completed) and their events.
Afterwards every task must be `completed` in the store, exactly once.

FLOOR, in the same rounds (alternating which goes first): the same --tasks no-op handler calls
as coroutines through a plain asyncio.Semaphore(--concurrency), no scheduler and no store.

Figures: drain time, scheduler overhead per task (drain time / tasks; target under 1 ms), and
the process's peak RSS over each orchestrator round (VmHWM, reset at the round's start through
/proc/self/clear_refs where the kernel allows; target under 150 MB). The floor's memory is not
shown: it runs in the same process, whose RSS the orchestrator rounds have already raised.
The issue's "orchestrator RSS" is the daemon's, so unless --skip-daemon an orchestrator daemon
subprocess (concurrency 0, env-manager pointed at a free port nobody listens on) also gets
--tasks SubmitTask calls over gRPC, and its VmRSS and VmHWM with all of them queued are shown
(idle figures before, for comparison); the RSS verdict is on the larger of the two peaks.

The exit status is 0 whatever the figures, unless --strict (then 1 when a target is missed);
2 when something fails (a task not completed, a daemon that does not come up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_infra.orchestrator.domain import Orchestrator  # noqa: E402
from agent_infra.orchestrator.executors.in_process import InProcessExecutor  # noqa: E402
from agent_infra.orchestrator.executors.protocol import Execution, ExecutionOutcome  # noqa: E402
from agent_infra.orchestrator.model import Task, TaskRequest, TaskState  # noqa: E402
from agent_infra.orchestrator.settings import OrchestratorSettings  # noqa: E402
from agent_infra.wire import orchestrator_pb2 as pb  # noqa: E402  (needs the repo root on sys.path)
from agent_infra.wire import orchestrator_pb2_grpc  # noqa: E402

from bench._support import (  # noqa: E402
    BenchError,
    arguments,
    load_average,
    orchestrator_config,
    run_and_report,
    status_mb,
)
from tests.daemon_support import free_port, running_daemon  # noqa: E402

if TYPE_CHECKING:
    from agent_infra.wire.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub

OURS = "orchestrator"
FLOOR = "semaphore"
SIDES = (OURS, FLOOR)
TASK_CLASS = "cpu_short"
PAYLOAD = {"command": '["true"]', "note": "dispatch bench"}
# `class` is a Python keyword: the field goes in through ** (see tests/unit/test_wire_stubs.py).
CLASS_FIELD: dict[str, Any] = {"class": TASK_CLASS}
OVERHEAD_TARGET_MS = 1.0
RSS_TARGET_MB = 150.0
DRAIN_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 60.0


# -- memory -----------------------------------------------------------------------------------


def reset_peak() -> bool:
    """Start VmHWM afresh from the current RSS (Linux: `5` to clear_refs); False if refused."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- the two sides ------------------------------------------------------------------------------


async def no_op(execution: Execution) -> ExecutionOutcome:
    return ExecutionOutcome(True, {}, "")


def settings_for(data_dir: Path, concurrency: int, tasks: int) -> OrchestratorSettings:
    return OrchestratorSettings.model_validate({
        # Nothing listens: the Orchestrator is built directly, the daemon's server is not used.
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(data_dir)},
        "classes": {TASK_CLASS: {"concurrency": concurrency, "max_backlog": max(1, tasks)}},
    })


@dataclass
class Sample:
    submit_s: float = 0.0
    drain_s: float = 0.0
    drain_cpu_s: float = 0.0
    peak_mb: float = 0.0  # VmHWM over the phase(s) measured
    queued_mb: float = 0.0  # VmRSS with every task queued (OURS)
    commits: int = 0  # store transactions during the drain (OURS)
    writes: int = 0  # store writes during the drain (OURS)


async def run_ours(workdir: Path, tasks: int, concurrency: int, submitters: int,
                   label: str) -> Sample:
    sample = Sample()
    data_dir = workdir / f"store-{label}"
    reset_peak()
    orchestrator = await Orchestrator.open(settings_for(data_dir, 0, tasks), CollectorRegistry(),
                                           InProcessExecutor(no_op))
    try:
        completed = 0
        ended_otherwise: list[Task] = []
        all_done = asyncio.Event()

        def listen(task: Task) -> None:
            nonlocal completed
            if task.status is TaskState.COMPLETED:
                completed += 1
            elif task.status.terminal:
                ended_otherwise.append(task)
            if completed + len(ended_otherwise) >= tasks:
                all_done.set()

        orchestrator.scheduler.listeners.append(listen)
        ids = iter(range(tasks))

        async def submitter() -> None:
            for number in ids:
                _, created = await orchestrator.scheduler.submit(TaskRequest(
                    id=f"{label}-{number}", task_class=TASK_CLASS, payload=PAYLOAD))
                if not created:
                    raise BenchError(f"task {label}-{number} was already there")

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(submitters, tasks)):
                group.create_task(submitter())
        sample.submit_s = time.perf_counter() - began
        pending, running = orchestrator.scheduler.queue_depths()[TASK_CLASS]
        if (pending, running) != (tasks, 0):
            raise BenchError(f"after submitting {tasks}: {pending} pending, {running} running")
        sample.queued_mb = status_mb("VmRSS")

        commits, writes = orchestrator.store.commits, orchestrator.store.writes
        cpu = time.process_time()
        began = time.perf_counter()
        orchestrator.reconfigure(settings_for(data_dir, concurrency, tasks))
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await all_done.wait()
        except TimeoutError:
            raise BenchError(f"{completed} of {tasks} tasks completed after "
                             f"{DRAIN_TIMEOUT_S:g} s") from None
        sample.drain_s = time.perf_counter() - began
        sample.drain_cpu_s = time.process_time() - cpu
        sample.commits = orchestrator.store.commits - commits
        sample.writes = orchestrator.store.writes - writes
        sample.peak_mb = status_mb("VmHWM")
        if ended_otherwise:
            first = ended_otherwise[0]
            raise BenchError(f"{len(ended_otherwise)} task(s) did not complete, e.g. {first.id}: "
                             f"{first.status.value} {first.error!r}")
    finally:
        await orchestrator.close()
    counts = await asyncio.to_thread(stored_counts, data_dir / "orchestrator.sqlite3")
    if counts != {"completed": tasks}:
        raise BenchError(f"the store holds {counts}, expected {tasks} completed")
    return sample


def stored_counts(path: Path) -> dict[str, int]:
    """status -> number of tasks, read from the SQLite file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {str(status): int(count) for status, count in
                conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")}
    finally:
        conn.close()


async def run_floor(tasks: int, concurrency: int, label: str) -> Sample:
    sample = Sample()
    semaphore = asyncio.Semaphore(concurrency)
    completed = 0

    async def one(number: int) -> None:
        nonlocal completed
        async with semaphore:
            outcome = await no_op(Execution(f"{label}-{number}", TASK_CLASS, PAYLOAD, 300))
        completed += outcome.success

    cpu = time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(one(number) for number in range(tasks)))
    sample.drain_s = time.perf_counter() - began
    sample.drain_cpu_s = time.process_time() - cpu
    if completed != tasks:
        raise BenchError(f"floor: {completed} of {tasks} handler calls succeeded")
    return sample


# -- the daemon's memory with the tasks queued -------------------------------------------------


@dataclass
class DaemonMemory:
    idle_rss_mb: float
    queued_rss_mb: float
    queued_hwm_mb: float
    submit_s: float
    stored: dict[str, int] = field(default_factory=dict)


async def daemon_memory(workdir: Path, tasks: int, submitters: int, label: str) -> DaemonMemory:
    data_dir = workdir / "daemon-data"
    config = workdir / "orchestrator.toml"
    # Nothing listens at the env-manager's address and nothing is dispatched: tasks stay queued.
    config.write_text(orchestrator_config(data_dir, f"127.0.0.1:{free_port()}", {TASK_CLASS: 0},
                                          10_000_000))
    try:
        async with running_daemon("orchestrator", workdir,
                                  args=["--config", str(config)]) as daemon:
            pid = daemon.process.pid
            await asyncio.sleep(1.0)  # settle, as bench/daemon_startup.py reads its idle RSS
            idle = status_mb("VmRSS", pid)
            stub = cast("OrchestratorServiceAsyncStub",
                        orchestrator_pb2_grpc.OrchestratorServiceStub(daemon.channel()))
            ids = iter(range(tasks))

            async def submitter() -> None:
                for number in ids:
                    request = pb.SubmitTaskRequest(id=f"{label}-d{number}", payload=PAYLOAD,
                                                   **CLASS_FIELD)
                    response = await stub.SubmitTask(request, timeout=CALL_TIMEOUT_S)
                    if not response.success:
                        raise BenchError(f"SubmitTask {request.id}: {response.error}")

            began = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for _ in range(min(submitters, tasks)):
                    group.create_task(submitter())
            submit_s = time.perf_counter() - began
            await asyncio.sleep(1.0)
            queued_rss = status_mb("VmRSS", pid)
            queued_hwm = status_mb("VmHWM", pid)
            if daemon.process.returncode is not None:
                raise BenchError(f"the daemon exited {daemon.process.returncode}")
    except grpc.aio.AioRpcError as exc:
        raise BenchError(f"SubmitTask: {exc.code().name} {exc.details()}") from None
    stored = await asyncio.to_thread(stored_counts, data_dir / "orchestrator.sqlite3")
    if stored != {"pending": tasks}:
        raise BenchError(f"the daemon's store holds {stored}, expected {tasks} pending")
    return DaemonMemory(idle, queued_rss, queued_hwm, submit_s, stored)


# -- run and report -----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[dict[str, list[Sample]], float,
                                                 DaemonMemory | None, bool]:
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    args.load_before = load_average()
    label = f"dp{uuid.uuid4().hex[:8]}"
    base_rss = status_mb("VmRSS")
    peak_resettable = reset_peak()
    memory: DaemonMemory | None = None
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        workdir = Path(tmp)
        for number in range(1, args.rounds + 1):
            order = SIDES if number % 2 else tuple(reversed(SIDES))
            for side in order:
                if side == OURS:
                    sample = await run_ours(workdir, args.tasks, args.concurrency,
                                            args.submitters, f"{label}-r{number}")
                    print(f"round {number}/{args.rounds} {OURS:<12} submit "
                          f"{sample.submit_s:6.2f} s  drain {sample.drain_s:6.2f} s "
                          f"(CPU {sample.drain_cpu_s:5.2f} s, {sample.commits} commits for "
                          f"{sample.writes} writes)  queued RSS {sample.queued_mb:5.1f} MB  "
                          f"peak {sample.peak_mb:5.1f} MB", file=sys.stderr, flush=True)
                else:
                    sample = await run_floor(args.tasks, args.concurrency, f"{label}-r{number}")
                    print(f"round {number}/{args.rounds} {FLOOR:<12} drain "
                          f"{sample.drain_s:6.3f} s (CPU {sample.drain_cpu_s:5.2f} s)",
                          file=sys.stderr, flush=True)
                samples[side].append(sample)
        if not args.skip_daemon:
            memory = await daemon_memory(workdir, args.tasks, args.submitters, label)
            print(f"daemon: idle RSS {memory.idle_rss_mb:.1f} MB; {args.tasks} SubmitTask in "
                  f"{memory.submit_s:.2f} s; queued RSS {memory.queued_rss_mb:.1f} MB, "
                  f"peak {memory.queued_hwm_mb:.1f} MB", file=sys.stderr, flush=True)
    return samples, base_rss, memory, peak_resettable


def report(samples: dict[str, list[Sample]], base_rss: float, memory: DaemonMemory | None,
           peak_resettable: bool, args: argparse.Namespace) -> bool:
    def med(side: str, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in samples[side]))

    tasks = args.tasks
    print(f"\ndispatch: {tasks} no-op tasks, concurrency {args.concurrency}, median of "
          f"{args.rounds} rounds (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load "
          f"average {args.load_before} before, {load_average()} after)")
    header = (f"{'':<13} {'submit s':>8} {'drain s':>8} {'per task ms':>11} {'tasks/s':>8} "
              f"{'CPU s':>6} {'peak MB':>8}   rounds drain s")
    print(header)
    for side in SIDES:
        submit = f"{med(side, 'submit_s'):>8.2f}" if side == OURS else f"{'-':>8}"
        # The floor runs in the same process after or before OURS: its VmHWM is OURS' too.
        peak_text = f"{med(side, 'peak_mb'):>8.1f}" if side == OURS else f"{'-':>8}"
        drain = med(side, "drain_s")
        rounds = ", ".join(f"{s.drain_s:.3f}" for s in samples[side])
        print(f"{side:<13} {submit} {drain:>8.3f} {drain / tasks * 1000:>11.3f} "
              f"{tasks / drain:>8.0f} {med(side, 'drain_cpu_s'):>6.2f} "
              f"{peak_text}   {rounds}")
    drain = med(OURS, "drain_s")
    floor = med(FLOOR, "drain_s")
    per_task_ms = drain / tasks * 1000
    writes = med(OURS, "writes")
    commits = med(OURS, "commits")
    print(f"orchestrator: submit {tasks / med(OURS, 'submit_s'):.0f} tasks/s in-process; drain "
          f"{writes:.0f} store writes in {commits:.0f} group commits "
          f"({writes / max(1.0, commits):.1f} per commit); {drain / floor:.0f}x the floor "
          f"({(drain - floor) / tasks * 1000:.3f} ms/task above it)")
    peak = max(s.peak_mb for s in samples[OURS])
    peak_note = "" if peak_resettable else " (VmHWM could not be reset: whole-process peak)"
    print(f"process RSS at start {base_rss:.1f} MB, with {tasks} queued "
          f"{med(OURS, 'queued_mb'):.1f} MB, peak {peak:.1f} MB{peak_note}")
    overhead_ok = per_task_ms < OVERHEAD_TARGET_MS
    rss_figure = peak if memory is None else max(peak, memory.queued_hwm_mb)
    if memory is not None:
        print(f"orchestrator daemon: idle RSS {memory.idle_rss_mb:.1f} MB; with {tasks} tasks "
              f"queued (via SubmitTask, {tasks / memory.submit_s:.0f}/s) RSS "
              f"{memory.queued_rss_mb:.1f} MB, peak {memory.queued_hwm_mb:.1f} MB")
    rss_ok = rss_figure < RSS_TARGET_MB
    print(f"scheduler overhead {per_task_ms:.3f} ms/task (target < {OVERHEAD_TARGET_MS:g} ms) "
          f"{'PASS' if overhead_ok else 'FAIL'}; orchestrator RSS {rss_figure:.1f} MB "
          f"(target < {RSS_TARGET_MB:g} MB) {'PASS' if rss_ok else 'FAIL'}")
    return overhead_ok and rss_ok


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per round")
    parser.add_argument("--concurrency", type=int, default=64, help="the class's concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    parser.add_argument("--submitters", type=int, default=50, help="concurrent submitters")
    parser.add_argument("--skip-daemon", action="store_true",
                        help="skip the daemon subprocess's RSS with the tasks queued")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.rounds < 1 or args.submitters < 1:
        parser.error("--tasks, --rounds and --submitters must be at least 1")
    if not 1 <= args.concurrency <= 10_000:
        parser.error("--concurrency must be between 1 and 10000")
    return run_and_report("dispatch", run(args), lambda figures: report(*figures, args),
                          strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
