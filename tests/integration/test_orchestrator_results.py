"""StreamTaskResults, CancelTask and ListTasks end to end against real daemons and containers.

Tasks that must stay pending go to `held` (concurrency 0); tasks that must stay running wait on a
gate file the test opens. One stack for the module; every test uses ids of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    Stack,
    follow,
    gated,
    list_tasks,
    new_id,
    orchestrator_stack,
    rpc_error,
    submit,
    wait_done,
    wait_status,
)

# Real daemons and containers; one event loop (and stack) for the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

CLASSES: dict[str, dict[str, int | str]] = {
    "cpu_short": {"concurrency": 4},
    "held": {"concurrency": 0},
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-results")
    async with orchestrator_stack(workdir, classes=CLASSES) as started:
        yield started


async def cancel(stack: Stack, task_id: str) -> pb.CancelTaskResponse:
    answer: pb.CancelTaskResponse = await stack.stub.CancelTask(
        pb.CancelTaskRequest(task_id=task_id), timeout=30)
    return answer


async def three_states(stack: Stack, gate: str) -> tuple[str, str, str]:
    """A completed, a pending and a running task (running until `gate` opens)."""
    done, pending, running = new_id("done"), new_id("pending"), new_id("running")
    await submit(stack.stub, done, "echo done")
    await wait_done(stack.stub, [done])
    await submit(stack.stub, pending, task_class="held")
    await submit(stack.stub, running, gated("echo ran", gate))
    await wait_status(stack.stub, running, "running")
    return done, pending, running


def view(results: list[pb.TaskResult]) -> list[tuple[str, str]]:
    return [(r.task_id, r.status) for r in results]


async def test_stream_sends_current_states_then_only_changes_and_ends(stack: Stack) -> None:
    gate = new_id("gate")
    done, pending, running = await three_states(stack, gate)
    call = stack.stub.StreamTaskResults(pb.StreamTaskResultsRequest(
        task_ids=[done, pending, running], include_completed=True), timeout=120)
    received: list[pb.TaskResult] = []
    async with asyncio.timeout(120):
        async for message in call:
            received.append(message)
            if len(received) == 3:
                # Current states first, in the order asked for, each once.
                assert view(received) == [(done, "completed"), (pending, "pending"),
                                          (running, "running")]
                assert received[0].result["stdout"] == "done\n"
                stack.open_gate(gate)
                await cancel(stack, pending)
    # Then only the changes (no resend of an unchanged state while `running` ran), and the
    # stream ended by itself once every task was terminal.
    assert len(received) == 5, view(received)
    assert set(view(received[3:])) == {(pending, "cancelled"), (running, "completed")}
    finished = {r.task_id: r for r in received[3:]}
    assert finished[running].result["stdout"] == "ran\n" and finished[running].completed_at > 0


async def test_include_completed_false_skips_finished_tasks(stack: Stack) -> None:
    gate = new_id("gate")
    done, pending, running = await three_states(stack, gate)
    call = stack.stub.StreamTaskResults(pb.StreamTaskResultsRequest(
        task_ids=[done, pending, running], include_completed=False), timeout=120)
    received: list[pb.TaskResult] = []
    async with asyncio.timeout(120):
        async for message in call:
            received.append(message)
            if len(received) == 2:
                assert view(received) == [(pending, "pending"), (running, "running")]
                stack.open_gate(gate)
                await cancel(stack, pending)
    assert len(received) == 4, view(received)
    assert set(view(received[2:])) == {(pending, "cancelled"), (running, "completed")}
    # Everything asked for already finished: nothing to send, and the stream ends.
    assert await follow(stack.stub, [done], include_completed=False, timeout=30) == []


async def test_a_stream_for_all_tasks_stays_open(stack: Stack) -> None:
    first, second = new_id("all-1"), new_id("all-2")
    call = stack.stub.StreamTaskResults(pb.StreamTaskResultsRequest(include_completed=False),
                                        timeout=120)
    mine: list[tuple[str, str]] = []
    # Whether the stream's first read of current states or its change feed brings `first`
    # pending, it comes exactly once; then each change, for any task, while the stream lasts.
    await submit(stack.stub, first, task_class="held")
    async with asyncio.timeout(60):
        async for message in call:
            if message.task_id not in (first, second):
                continue
            mine.append((message.task_id, message.status))
            if mine[-1] == (first, "pending"):
                await cancel(stack, first)
            elif mine[-1] == (first, "cancelled"):
                await submit(stack.stub, second, task_class="held")
            elif mine[-1] == (second, "pending"):
                await cancel(stack, second)
            elif mine[-1] == (second, "cancelled"):
                break
    call.cancel()
    assert mine == [(first, "pending"), (first, "cancelled"), (second, "pending"),
                    (second, "cancelled")]


async def test_stream_for_an_unknown_id_is_not_found(stack: Stack) -> None:
    ghost = new_id("ghost")
    error = await rpc_error(follow(stack.stub, [ghost], timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND and ghost in (error.details() or "")


async def test_cancel_a_pending_task(stack: Stack) -> None:
    task_id = new_id("cancel")
    await submit(stack.stub, task_id, task_class="held")
    answer = await cancel(stack, task_id)
    assert (answer.success, answer.status, answer.error) == (True, "cancelled", "")
    found = await stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
    assert found.status == "cancelled" and found.attempts == 0
    # Cancelling again is idempotent: the task is cancelled, as asked.
    again = await cancel(stack, task_id)
    assert (again.success, again.status, again.error) == (True, "cancelled", "")
    # A resubmit of the same task is the same (cancelled) task, not a new run.
    assert (await submit(stack.stub, task_id, task_class="held")).success
    found = await stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
    assert found.status == "cancelled"


async def test_cancel_a_finished_or_unknown_task(stack: Stack) -> None:
    task_id = new_id("finished")
    await submit(stack.stub, task_id, "true")
    await wait_done(stack.stub, [task_id])
    answer = await cancel(stack, task_id)
    assert (answer.success, answer.status) == (False, "completed")
    assert "already completed" in answer.error
    ghost = await rpc_error(stack.stub.CancelTask(pb.CancelTaskRequest(task_id=new_id()),
                                                  timeout=30))
    assert ghost.code() == grpc.StatusCode.NOT_FOUND
    empty = await rpc_error(stack.stub.CancelTask(pb.CancelTaskRequest(), timeout=30))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_tasks_filters_and_pages(stack: Stack) -> None:
    workflow = new_id("wf")  # only this test's tasks carry it
    held = [new_id("l-held") for _ in range(5)]
    ran = [new_id("l-ran") for _ in range(2)]
    for task_id in ran:
        await submit(stack.stub, task_id, "true", workflow_id=workflow)
    for task_id in held:
        await submit(stack.stub, task_id, task_class="held", workflow_id=workflow)
    await wait_done(stack.stub, ran)
    submitted = [*ran, *held]

    everything = await list_tasks(stack.stub, workflow_id=workflow)
    assert [t.task_id for t in everything] == submitted[::-1]  # newest first
    assert {t.workflow_id for t in everything} == {workflow}
    pending = await list_tasks(stack.stub, workflow_id=workflow, statuses=["pending"])
    assert [t.task_id for t in pending] == held[::-1]
    assert {(t.status, t.task_class) for t in pending} == {("pending", "held")}
    both = await list_tasks(stack.stub, workflow_id=workflow, statuses=["pending", "completed"])
    assert len(both) == 7
    by_class = await list_tasks(stack.stub, workflow_id=workflow, task_class="cpu_short")
    assert [t.task_id for t in by_class] == ran[::-1]
    assert all(t.status == "completed" and t.completed_at > 0 for t in by_class)

    # Pages of 3: 3 + 3 + 1, each token continuing where the last page ended.
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stack.stub.ListTasks(pb.ListTasksRequest(
            workflow_id=workflow, page_size=3, page_token=token), timeout=30)
        pages.append([t.task_id for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [task_id for p in pages for task_id in p] == submitted[::-1]

    for task_id in held:
        await cancel(stack, task_id)
    cancelled = await list_tasks(stack.stub, workflow_id=workflow, statuses=["cancelled"])
    assert sorted(t.task_id for t in cancelled) == sorted(held)


async def test_list_tasks_rejects_bad_filters(stack: Stack) -> None:
    for request in (pb.ListTasksRequest(statuses=["done"]),
                    pb.ListTasksRequest(page_token="not-a-token"),
                    pb.ListTasksRequest(page_size=-1)):
        error = await rpc_error(stack.stub.ListTasks(request, timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
