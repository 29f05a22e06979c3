"""Workflows end to end: every step a real container task on a real env-manager.

A diamond (a -> b, a -> c, b + c -> d) with templating from the run's input and from parent
results; a failing branch; StreamWorkflowStatus; idempotent run starts; versioned specs; spec
validation. One stack for the module; every test uses workflow ids of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    Stack,
    event_stream,
    list_tasks,
    new_id,
    orchestrator_stack,
    rpc_error,
)

# Real daemons and containers; one event loop (and stack) for the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

TERMINAL_RUN = frozenset({"completed", "failed"})

DIAMOND: dict[str, Any] = {"steps": [
    # An argv list: a JSON value, rendered inside.
    {"id": "a", "payload": {"command": ["printf", "%s", "{{ input.greeting }}"]}},
    {"id": "b", "depends_on": ["a"],
     "payload": {"command": "sleep 1; printf %s b-{{ steps.a.result.stdout }}"}},
    {"id": "c", "depends_on": ["a"],
     "payload": {"command": "sleep 1; printf %s c-{{steps.a.result.stdout}}"}},
    {"id": "d", "depends_on": ["b", "c"], "payload": {
        "command": "printf %s {{ steps.b.result.stdout }}+{{ steps.c.result.stdout }}"
                   "+{{ workflow.id }}"}},
]}

FAILING_BRANCH: dict[str, Any] = {"steps": [
    {"id": "a", "payload": {"command": "true"}},
    {"id": "b", "depends_on": ["a"], "payload": {"command": "sleep 2; printf slow"}},
    {"id": "c", "depends_on": ["a"], "payload": {"command": "echo failing; exit 3"}},
    {"id": "d", "depends_on": ["b", "c"], "payload": {"command": "printf never"}},
]}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-workflows")
    async with orchestrator_stack(workdir, classes={"cpu_short": {"concurrency": 4}}) as started:
        yield started


async def create(stack: Stack, workflow_id: str, spec: Mapping[str, Any] | bytes,
                 name: str = "") -> pb.CreateWorkflowResponse:
    raw = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    answer: pb.CreateWorkflowResponse = await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
        id=workflow_id, name=name or workflow_id, description="test", spec=raw), timeout=30)
    return answer


async def start(stack: Stack, workflow_id: str, key: str = "",
                run_input: Mapping[str, str] | None = None) -> pb.StartWorkflowRunResponse:
    answer: pb.StartWorkflowRunResponse = await stack.stub.StartWorkflowRun(
        pb.StartWorkflowRunRequest(workflow_id=workflow_id, idempotency_key=key,
                                   input=dict(run_input or {})), timeout=30)
    return answer


async def watch(stack: Stack, run_id: str, timeout: float = 120.0
                ) -> list[pb.WorkflowStatusUpdate]:
    """Every update of the run until the server ends the stream."""
    call = stack.stub.StreamWorkflowStatus(pb.StreamWorkflowStatusRequest(run_id=run_id),
                                           timeout=timeout)
    async with asyncio.timeout(timeout):
        return [update async for update in call]


async def task_status(stack: Stack, task_id: str) -> pb.GetTaskStatusResponse:
    found: pb.GetTaskStatusResponse = await stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
    return found


def check_stream(updates: list[pb.WorkflowStatusUpdate], final: str) -> None:
    """A stream that ended by itself at `final`, never repeating an update or going back."""
    assert updates, "no update at all"
    assert updates[-1].status == final
    assert all(u.status not in TERMINAL_RUN for u in updates[:-1]), updates
    views = [(u.status, u.steps_completed, u.current_step, u.error) for u in updates]
    assert all(a != b for a, b in itertools.pairwise(views)), views
    done = [u.steps_completed for u in updates]
    assert done == sorted(done), done


async def test_a_diamond_runs_with_templating_and_parallel_branches(stack: Stack) -> None:
    began = int(time.time()) - 1
    workflow_id = new_id("diamond")
    created = await create(stack, workflow_id, DIAMOND)
    assert (created.success, created.workflow_id, created.version) == (True, workflow_id, 1)
    run = await start(stack, workflow_id, run_input={"greeting": "hello"})
    assert run.success and run.created and re.fullmatch(r"run-[0-9a-f]{32}", run.run_id)

    updates = await watch(stack, run.run_id)
    check_stream(updates, "completed")
    assert updates[0].total_steps == 4 and updates[-1].steps_completed == 4
    assert updates[-1].output["d.stdout"] == f"b-hello+c-hello+{workflow_id}"
    assert updates[-1].error == ""

    tasks = {t.task_id: t for t in await list_tasks(stack.stub, workflow_id=workflow_id)}
    steps = {step: f"{run.run_id}:{step}" for step in "abcd"}
    assert set(tasks) == set(steps.values())
    assert {t.status for t in tasks.values()} == {"completed"}
    assert (await task_status(stack, steps["a"])).result["stdout"] == "hello"
    assert (await task_status(stack, steps["b"])).result["stdout"] == "b-hello"

    # b and c ran side by side: both started before either finished.
    seqs: dict[tuple[str, str], int] = {}
    async with event_stream(stack.stub, event_types=["task_started", "task_completed"],
                            since=began) as events:
        async with asyncio.timeout(60):
            while (event := await events.get()).resource_id != steps["d"]:
                seqs[(event.event_type, event.resource_id)] = int(event.data["seq"])
    last_start = max(seqs[("task_started", steps[s])] for s in "bc")
    first_end = min(seqs[("task_completed", steps[s])] for s in "bc")
    assert last_start < first_end, seqs


async def test_a_failing_branch_fails_the_run_skips_below_and_lets_siblings_finish(
        stack: Stack) -> None:
    began = int(time.time()) - 1
    workflow_id = new_id("failing")
    await create(stack, workflow_id, FAILING_BRANCH)
    run = await start(stack, workflow_id)
    updates = await watch(stack, run.run_id)
    check_stream(updates, "failed")
    assert updates[-1].error == "step 'c' failed: exit code 3", updates[-1].error

    task = {step: f"{run.run_id}:{step}" for step in "abcd"}
    assert (await task_status(stack, task["c"])).status == "failed"
    # The sibling that was running when c failed finished, and completed.
    slow = await task_status(stack, task["b"])
    assert (slow.status, slow.result["stdout"]) == ("completed", "slow")
    # d never ran: it has no task at all.
    error = await rpc_error(stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=task["d"]), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    # The run's own events (their resource is the run), keyed type:step.
    seen: dict[str, pb.SystemEvent] = {}
    async with event_stream(stack.stub, since=began) as events:
        async with asyncio.timeout(60):
            while "workflow_failed:" not in seen:
                event = await events.get()
                if event.resource_id == run.run_id:
                    seen[f"{event.event_type}:{event.data.get('step_id', '')}"] = event
    assert seen["workflow_step_skipped:d"].data["error"] == "skipped: step 'c' failed"
    assert "workflow_step_started:d" not in seen
    assert seen["workflow_step_failed:c"].data["error"] == "exit code 3"
    # The run ended only after b had.
    assert int(seen["workflow_step_completed:b"].data["seq"]) < int(
        seen["workflow_failed:"].data["seq"])


async def test_stream_of_a_finished_run_sends_its_state_and_ends(stack: Stack) -> None:
    workflow_id = new_id("single")
    await create(stack, workflow_id, {"steps": [{"id": "only", "payload": {"command": "true"}}]})
    run = await start(stack, workflow_id)
    check_stream(await watch(stack, run.run_id), "completed")
    again = await watch(stack, run.run_id, timeout=30)
    assert [(u.status, u.steps_completed, u.total_steps) for u in again] == [("completed", 1, 1)]
    ghost = await rpc_error(watch(stack, "run-" + "0" * 32, timeout=30))
    assert ghost.code() == grpc.StatusCode.NOT_FOUND
    empty = await rpc_error(watch(stack, "", timeout=30))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_same_idempotency_key_returns_the_same_run(stack: Stack) -> None:
    workflow_id, other_id = new_id("idem"), new_id("idem-other")
    spec = {"steps": [{"id": "wait", "payload": {"command": "sleep 1"}}]}
    await create(stack, workflow_id, spec)
    await create(stack, other_id, spec)
    key = new_id("key")
    first = await start(stack, workflow_id, key, {"n": "1"})
    while_running = await start(stack, workflow_id, key, {"n": "2"})
    assert first.created and not while_running.created
    assert while_running.run_id == first.run_id and while_running.success
    check_stream(await watch(stack, first.run_id), "completed")
    after = await start(stack, workflow_id, key)
    assert (after.run_id, after.created, after.success) == (first.run_id, False, True)
    # Exactly one run happened: one task in the workflow.
    assert len(await list_tasks(stack.stub, workflow_id=workflow_id)) == 1
    # No key: a new run each time.
    fresh = await start(stack, workflow_id)
    assert fresh.created and fresh.run_id != first.run_id
    # A key is scoped to its workflow: the other workflow starts its own run with it.
    other = await start(stack, other_id, key)
    assert other.created and other.run_id != first.run_id
    unknown = await rpc_error(start(stack, new_id("nope")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_create_is_idempotent_and_a_different_spec_is_a_new_version(stack: Stack) -> None:
    workflow_id = new_id("versions")
    first = {"steps": [{"id": "x", "payload": {"command": "true"}},
                       {"id": "y", "depends_on": ["x"], "payload": {"command": "true"}}]}
    # The same workflow in the other shape, with other whitespace and key order.
    same = (b'{"edges": [{"to": "y", "from": "x"}],\n "nodes": [\n'
            b'  {"payload": {"command": "true"}, "id": "y"},\n'
            b'  {"id": "x", "payload": {"command": "true"}}]}')
    second = {"steps": [{"id": "x", "payload": {"command": "echo v2"}}]}
    assert (await create(stack, workflow_id, first)).version == 1
    assert (await create(stack, workflow_id, same)).version == 1
    assert (await create(stack, workflow_id, second, name="renamed")).version == 2
    listed = {w.workflow_id: w for w in (await stack.stub.ListWorkflows(
        pb.ListWorkflowsRequest(), timeout=30)).workflows}
    assert (listed[workflow_id].version, listed[workflow_id].total_steps) == (2, 1)
    assert listed[workflow_id].name == "renamed" and listed[workflow_id].created_at > 0
    # A new run uses the latest version.
    run = await start(stack, workflow_id)
    updates = await watch(stack, run.run_id)
    check_stream(updates, "completed")
    assert updates[-1].output["x.stdout"] == "v2\n"
    # Back to the first spec: that is a change too, so version 3.
    assert (await create(stack, workflow_id, first)).version == 3


BAD_SPECS: list[tuple[bytes, str]] = [
    (b'{"steps": [\n  {"id": "a",}\n]}', r"not valid JSON: line 2 column \d+"),
    (json.dumps({"steps": [{"id": "a", "depends_on": ["c"]}, {"id": "b", "depends_on": ["a"]},
                           {"id": "c", "depends_on": ["b"]}]}).encode(),
     r"dependency cycle: a -> b -> c -> a"),
    (json.dumps({"steps": [{"id": "a", "depends_on": ["zz"]}]}).encode(),
     r"step 'a' depends on unknown step 'zz'"),
    (json.dumps({"nodes": [{"id": "a"}], "edges": [{"from": "a", "to": "zz"}]}).encode(),
     r"edges\[0\]\.to names unknown step 'zz'"),
    (json.dumps({"steps": [{"id": "a"}, {"id": "a"}]}).encode(), r"duplicate step ids: a"),
    (json.dumps({"steps": [{"id": "a", "class": "quantum"}]}).encode(),
     r"step 'a': unknown class 'quantum'"),
    (json.dumps({"steps": [{"id": "a"}, {"id": "b", "payload": {
        "command": "echo {{ steps.a.result.stdout }}"}}]}).encode(),
     r"step 'b' payload 'command' refers to step 'a', which is not an ancestor"),
    (json.dumps({"steps": [{"id": "a", "payload": {"command": "echo {{ nope }}"}}]}).encode(),
     r"step 'a'.*payload 'command'"),
    (b"", r"spec is empty"),
    (b"[]", r"spec must be a JSON object"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
async def test_a_bad_spec_is_invalid_argument_saying_why(stack: Stack, spec: bytes,
                                                         message: str) -> None:
    workflow_id = new_id("bad")
    error = await rpc_error(create(stack, workflow_id, spec))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, error.details() or ""), error.details()
    listed = (await stack.stub.ListWorkflows(pb.ListWorkflowsRequest(), timeout=30)).workflows
    assert workflow_id not in {w.workflow_id for w in listed}


async def test_a_bad_workflow_id_is_invalid_argument(stack: Stack) -> None:
    error = await rpc_error(create(stack, "has space", {"steps": [{"id": "a"}]}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow id" in (error.details() or "")
