"""Per-class concurrency limits, sampled while real containers run, and no starvation between
classes. env-manager's own limits are set higher, so the orchestrator's are what is tested."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    Workload,
    gated,
    list_tasks,
    new_id,
    orchestrator_stack,
    submit,
    wait_done,
)

pytestmark = pytest.mark.docker  # real daemons and containers

WORKLOADS = {"cpu_short": Workload(6), "cpu_long": Workload(4)}


async def test_a_class_never_runs_more_than_its_concurrency(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path, workloads=WORKLOADS,
                                  classes={"cpu_short": {"concurrency": 2}}) as stack:
        ids = [new_id("limit") for _ in range(8)]
        for task_id in ids:
            await submit(stack.stub, task_id, "sleep 1")
        done = asyncio.ensure_future(wait_done(stack.stub, ids, timeout=180))
        samples: list[tuple[int, int, int]] = []
        try:
            while not done.done():
                listed = len(await list_tasks(stack.stub, statuses=["running"],
                                              task_class="cpu_short"))
                _, queue = await stack.http("GET", "/queue/status")
                by_http = queue["classes"]["cpu_short"]["running"]
                containers = len(await stack.containers(running_only=True))
                samples.append((listed, by_http, containers))
                await asyncio.wait({done}, timeout=0.1)
            results = await done
        finally:
            done.cancel()
        assert {r.status for r in results.values()} == {"completed"}
        assert len(samples) >= 10, samples
        assert max(max(sample) for sample in samples) == 2, samples


async def test_a_saturated_class_does_not_hold_back_another(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path, workloads=WORKLOADS,
                                  classes={"cpu_short": {"concurrency": 2}}) as stack:
        short = [new_id("short") for _ in range(5)]
        for task_id in short:
            await submit(stack.stub, task_id, gated("true"))
        long_id = new_id("long")
        await submit(stack.stub, long_id, "echo long", task_class="cpu_long")
        done = await wait_done(stack.stub, [long_id], timeout=60)
        assert done[long_id].status == "completed"
        # ...while cpu_short was, and still is, full: 2 running, 3 waiting.
        statuses = [t.status for t in await list_tasks(stack.stub, task_class="cpu_short")]
        assert sorted(statuses) == ["pending"] * 3 + ["running"] * 2
        metrics = (await stack.stub.GetMetrics(pb.GetMetricsRequest(
            metric_names=["queue_depth.cpu_short", "running.cpu_short"]), timeout=30)).metrics
        assert dict(metrics) == {"queue_depth.cpu_short": 3.0, "running.cpu_short": 2.0}
        stack.open_gate()
        finished = await wait_done(stack.stub, short, timeout=120)
        assert {r.status for r in finished.values()} == {"completed"}
