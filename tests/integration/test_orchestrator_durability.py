"""kill -9 of the orchestrator with 500 tasks in flight, then a restart on the same data dir.

Every acknowledged submit must survive and end in exactly one terminal state, and no task may
run twice. Each task appends its id to a file in a directory its workload class mounts (one short
O_APPEND write per task), so the file is the record of executions, independent of either daemon.
The kill lands while submits are still arriving, tasks are pending and containers are running;
ids whose submit was not acknowledged are submitted again afterwards (idempotently).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from pathlib import Path

import grpc
import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.daemon_support import eventually
from tests.orchestrator_support import (
    IO_MOUNT,
    TERMINAL,
    Stack,
    Workload,
    event_stream,
    list_tasks,
    orchestrator_stack,
    submit,
    task_request,
    wait_done,
)

pytestmark = pytest.mark.docker  # real daemons and containers

TOTAL = 500
FIRST_WAVE = 300
KILL_AFTER_ACKS = 350
CONCURRENT_SUBMITS = 20
CONCURRENCY = 8


def command(task_id: str) -> str:
    return f"echo {task_id} >> {IO_MOUNT}/log"


async def submit_all(stack: Stack, ids: list[str], acked: set[str],
                     on_ack: asyncio.Event | None = None) -> None:
    """Submit `ids`, CONCURRENT_SUBMITS at a time; record the acknowledged ones. Once the
    orchestrator is gone, the rest are not tried (they stay unacknowledged)."""
    stub = stack.stub
    limit = asyncio.Semaphore(CONCURRENT_SUBMITS)
    gone = False

    async def send(task_id: str) -> None:
        nonlocal gone
        async with limit:
            if gone:
                return
            try:
                answer = await stub.SubmitTask(task_request(task_id, command(task_id)),
                                               timeout=30)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                      grpc.StatusCode.UNKNOWN), exc
                gone = True
                return
            assert answer.success and answer.task_id == task_id
            acked.add(task_id)
            if on_ack is not None and len(acked) >= KILL_AFTER_ACKS:
                on_ack.set()

    await asyncio.gather(*(send(task_id) for task_id in ids))


@pytest.mark.timeout(900)
async def test_kill_9_with_500_tasks_in_flight_loses_none_and_runs_none_twice(
        tmp_path: Path) -> None:
    began = int(time.time()) - 1
    run = uuid.uuid4().hex[:8]
    ids = [f"dur-{run}-{index:03d}" for index in range(TOTAL)]
    async with orchestrator_stack(
            tmp_path, workloads={"cpu_short": Workload(CONCURRENCY)},
            classes={"cpu_short": {"concurrency": CONCURRENCY}}) as stack:
        acked: set[str] = set()
        await submit_all(stack, ids[:FIRST_WAVE], acked)
        assert acked == set(ids[:FIRST_WAVE])

        # In flight: some done, some running on env-manager, most still pending.
        async def some_ran() -> bool:
            return len(stack.io_lines()) >= 10
        await eventually(some_ran, "10 tasks to have run", timeout=120)
        statuses = collections.Counter(t.status for t in await list_tasks(stack.stub))
        assert statuses["running"] > 0 and statuses["pending"] >= 100, statuses

        victim = stack.daemon
        enough = asyncio.Event()

        async def kill_when_enough() -> None:
            await enough.wait()
            victim.signal(signal.SIGKILL)

        killer = asyncio.ensure_future(kill_when_enough())
        await submit_all(stack, ids[FIRST_WAVE:], acked, on_ack=enough)
        await killer
        await stack.kill_orchestrator(signalled=True)
        ran_before_restart = len(stack.io_lines())
        assert ran_before_restart < TOTAL

        await stack.start_orchestrator()
        stored = {t.task_id: t for t in await list_tasks(stack.stub)}
        lost = acked - set(stored)
        assert not lost, f"{len(lost)} acknowledged tasks lost: {sorted(lost)[:10]}"
        assert set(stored) <= set(ids)

        # Not acknowledged: maybe stored, maybe not. Submitting again is the same task either way.
        for task_id in sorted(set(ids) - acked):
            answer = await submit(stack.stub, task_id, command(task_id))
            assert answer.success and answer.task_id == task_id

        results = await wait_done(stack.stub, ids, timeout=600)
        outcomes = collections.Counter(r.status for r in results.values())
        assert outcomes == {"completed": TOTAL}, outcomes

        # Exactly one terminal state each, in the store...
        listed = await list_tasks(stack.stub)
        assert sorted(t.task_id for t in listed) == sorted(ids)
        assert {t.status for t in listed} == {"completed"}
        # ...and exactly one terminal event each (a marker task's event closes the replay).
        marker = f"dur-{run}-marker"
        await submit(stack.stub, marker, "true")
        finished: collections.Counter[str] = collections.Counter()
        async with event_stream(stack.stub, event_types=sorted(f"task_{s}" for s in TERMINAL),
                                since=began) as events:
            async with asyncio.timeout(120):
                while (event := await events.get()).resource_id != marker:
                    finished[event.resource_id] += 1
        assert set(finished) == set(ids) and set(finished.values()) == {1}, (
            {k: v for k, v in finished.items() if v != 1})

        # And each ran exactly once: one line per task in the execution log.
        executions = collections.Counter(stack.io_lines())
        assert set(executions) == set(ids)
        twice = {task_id: n for task_id, n in executions.items() if n != 1}
        assert not twice, f"tasks that ran more than once: {twice}"

        cached = sum(r.result.get("cached") == "true" for r in results.values())
        print(f"\nacknowledged before the kill: {len(acked)}; ran before the restart: "
              f"{ran_before_restart}; answered from env-manager's store after it: {cached}")
        metrics = await stack.stub.GetMetrics(pb.GetMetricsRequest(
            metric_names=["queue_depth.cpu_short", "running.cpu_short"]), timeout=30)
        assert dict(metrics.metrics) == {"queue_depth.cpu_short": 0.0, "running.cpu_short": 0.0}
