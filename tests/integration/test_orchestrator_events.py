"""StreamEvents end to end: replay from since_timestamp, then live, with no gap and no duplicate
across the boundary (SystemEvent.data["seq"] is the store's sequence number); type filters.

Each test has an orchestrator of its own, so every event in its store is the test's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    event_stream,
    new_id,
    next_events,
    orchestrator_stack,
    rpc_error,
    submit,
    wait_done,
)

pytestmark = pytest.mark.docker  # real daemons and containers

HELD = {"held": {"concurrency": 0}}


async def test_replay_then_live_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    began = int(time.time()) - 1
    async with orchestrator_stack(tmp_path, classes=HELD) as stack:
        history = [new_id("old") for _ in range(40)]
        for task_id in history:
            await submit(stack.stub, task_id, task_class="held")
        live = [new_id("new") for _ in range(60)]

        async def keep_submitting() -> None:
            for task_id in live:
                await submit(stack.stub, task_id, task_class="held")

        # Submits race the subscription: the replay/live boundary falls somewhere among them.
        producer = asyncio.ensure_future(keep_submitting())
        try:
            async with event_stream(stack.stub, since=began) as events:
                received = await next_events(events, len(history) + len(live), timeout=120)
                await producer
                # A last, certainly live, event: nothing may come between.
                last = new_id("last")
                await submit(stack.stub, last, task_class="held")
                tail = await next_events(events, 1)
        finally:
            producer.cancel()
        seqs = [int(event.data["seq"]) for event in [*received, *tail]]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        assert [e.resource_id for e in received] == [*history, *live]
        assert {e.event_type for e in received} == {"task_submitted"}
        assert tail[0].resource_id == last
        assert all(e.timestamp >= began for e in received)


async def test_event_types_filter_the_replay_and_the_live_part(tmp_path: Path) -> None:
    began = int(time.time()) - 1
    async with orchestrator_stack(tmp_path, classes=HELD) as stack:
        good, bad, held = new_id("good"), new_id("bad"), new_id("held")
        await submit(stack.stub, good, "true")
        await submit(stack.stub, bad, "exit 2")
        await submit(stack.stub, held, task_class="held")
        await wait_done(stack.stub, [good, bad])
        ends = ["task_completed", "task_failed", "task_cancelled"]
        async with event_stream(stack.stub, event_types=ends, since=began) as events:
            replayed = await next_events(events, 2)
            await stack.stub.CancelTask(pb.CancelTaskRequest(task_id=held), timeout=30)
            cancelled = await next_events(events, 1)
        assert sorted((e.event_type, e.resource_id) for e in replayed) == sorted(
            [("task_completed", good), ("task_failed", bad)])
        failed = next(e for e in replayed if e.event_type == "task_failed")
        assert failed.data["error"] == "exit code 2"
        assert (cancelled[0].event_type, cancelled[0].resource_id) == ("task_cancelled", held)
        assert int(cancelled[0].data["seq"]) > max(int(e.data["seq"]) for e in replayed)

        # since_timestamp 0: live only, nothing from before.
        async with event_stream(stack.stub, event_types=["task_submitted"]) as events:
            later = new_id("later")
            # Keep submitting until the subscription is surely registered and sees one.
            seen = asyncio.ensure_future(events.get())
            while not seen.done():
                await submit(stack.stub, new_id("probe"), task_class="held")
                await asyncio.wait({seen}, timeout=0.2)
            first_live = seen.result()
            assert first_live.resource_id.startswith("probe-")
            await submit(stack.stub, later, task_class="held")
            async with asyncio.timeout(30):
                while (event := await events.get()).resource_id != later:
                    assert event.resource_id.startswith("probe-")

        unknown = stack.stub.StreamEvents(pb.StreamEventsRequest(
            event_types=["task_completed", "task_exploded"]), timeout=30)
        error = await rpc_error(unknown.read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "task_exploded" in (error.details() or "")
