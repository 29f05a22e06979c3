"""SIGHUP reloads class concurrency live: raised, more tasks run at once; lowered, running tasks
finish and no new one starts beyond the new limit. Tasks wait on gate files, so "how many run at
once" is a count, not a race."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

from tests.daemon_support import eventually
from tests.orchestrator_support import (
    Stack,
    Workload,
    gated,
    list_tasks,
    new_id,
    orchestrator_stack,
    submit,
    wait_done,
)

pytestmark = pytest.mark.docker  # real daemons and containers


async def counts(stack: Stack, ids: list[str]) -> collections.Counter[str]:
    listed = await list_tasks(stack.stub, task_class="cpu_short")
    return collections.Counter(t.status for t in listed if t.task_id in ids)


async def until_counts(stack: Stack, ids: list[str], **expected: int) -> None:
    async def reached() -> bool:
        found = await counts(stack, ids)
        return all(found[status] == n for status, n in expected.items())
    await eventually(reached, f"task counts {expected}", timeout=60)


async def stays_at_most(stack: Stack, ids: list[str], running: int) -> None:
    """A limit is an absence (nothing more starts): sample it for a while."""
    for _ in range(5):
        assert (await counts(stack, ids))["running"] <= running
        await asyncio.sleep(0.1)


async def test_sighup_changes_class_concurrency_live(tmp_path: Path) -> None:
    async with orchestrator_stack(tmp_path, workloads={"cpu_short": Workload(6)},
                                  classes={"cpu_short": {"concurrency": 1}}) as stack:
        first = [new_id("first") for _ in range(5)]
        for task_id in first:
            await submit(stack.stub, task_id, gated("true", "gate-1"))
        await until_counts(stack, first, running=1, pending=4)
        await stays_at_most(stack, first, 1)

        await stack.reload_orchestrator({"cpu_short": {"concurrency": 3}})
        await until_counts(stack, first, running=3, pending=2)
        await stays_at_most(stack, first, 3)
        assert "reloaded" in stack.daemon.log_text()

        # Down to 1 while 3 run: they carry on; what is left starts one at a time.
        await stack.reload_orchestrator({"cpu_short": {"concurrency": 1}})
        second = [new_id("second") for _ in range(3)]
        for task_id in second:
            await submit(stack.stub, task_id, gated("true", "gate-2"))
        stack.open_gate("gate-1")
        await wait_done(stack.stub, first)
        await until_counts(stack, second, running=1, pending=2)
        await stays_at_most(stack, second, 1)
        stack.open_gate("gate-2")
        results = await wait_done(stack.stub, second)
        assert {r.status for r in results.values()} == {"completed"}
