"""Priorities observed in the order tasks start, on real daemons and containers.

cpu_short runs one task at a time; a blocker holds the slot (waiting on a gate file) while tasks
of mixed priorities queue behind it. Once the gate opens they must start highest priority first,
in submit order within a priority: seen both in the task_started events and in the order the
containers themselves ran (each appends its id to a shared file, one at a time).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.orchestrator_support import (
    IO_MOUNT,
    event_stream,
    gated,
    new_id,
    next_events,
    orchestrator_stack,
    submit,
    wait_done,
    wait_status,
)

pytestmark = pytest.mark.docker  # real daemons and containers


async def test_tasks_start_by_priority_then_submit_order(tmp_path: Path) -> None:
    began = int(time.time()) - 1
    async with orchestrator_stack(tmp_path, classes={"cpu_short": {"concurrency": 1}}) as stack:
        blocker = new_id("blocker")
        await submit(stack.stub, blocker, gated(f"echo {blocker} >> {IO_MOUNT}/log"))
        await wait_status(stack.stub, blocker, "running")

        plan = [("p0-first", 0), ("p5-first", 5), ("p1", 1), ("p5-second", 5),
                ("negative", -3), ("p0-second", 0), ("p9", 9)]
        ids = {name: new_id(name) for name, _ in plan}
        for name, priority in plan:
            await submit(stack.stub, ids[name], f"echo {ids[name]} >> {IO_MOUNT}/log",
                         priority=priority)

        expected = [ids[name] for name in ("p9", "p5-first", "p5-second", "p1", "p0-first",
                                           "p0-second", "negative")]
        stack.open_gate()
        # The daemon is this test's alone: its history since `began` is all ours.
        async with event_stream(stack.stub, event_types=["task_started"], since=began) as events:
            started = await next_events(events, 1 + len(expected))
        assert [event.resource_id for event in started] == [blocker, *expected]
        assert [int(e.data["seq"]) for e in started] == sorted(int(e.data["seq"]) for e in started)

        await wait_done(stack.stub, [blocker, *expected])
        assert stack.io_lines() == [blocker, *expected]
