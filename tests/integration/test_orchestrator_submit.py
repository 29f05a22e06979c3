"""SubmitTask and GetTaskStatus end to end: a real orchestrator dispatching to a real env-manager
running real containers. One stack for the module; every test uses ids of its own."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.daemon_support import eventually
from tests.orchestrator_support import (
    Stack,
    new_id,
    orchestrator_stack,
    rpc_error,
    submit,
    task_request,
    wait_done,
)

# Real daemons and containers; one event loop (and stack) for the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

# `parked` never dispatches (concurrency 0) and holds at most 2 pending tasks.
CLASSES: dict[str, dict[str, int | str]] = {
    "cpu_short": {"concurrency": 4},
    "parked": {"concurrency": 0, "max_backlog": 2},
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-submit")
    async with orchestrator_stack(workdir, classes=CLASSES) as started:
        yield started


async def status(stack: Stack, task_id: str) -> pb.GetTaskStatusResponse:
    found: pb.GetTaskStatusResponse = await stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
    return found


async def test_a_task_runs_in_a_container_and_its_result_is_kept(stack: Stack) -> None:
    argv, shell = new_id("argv"), new_id("shell")
    answer = await submit(stack.stub, argv, ["echo", "hello world"])
    assert (answer.success, answer.task_id, answer.error) == (True, argv, "")
    await submit(stack.stub, shell, 'read line; echo "$GREETING $line"; echo oops >&2',
                 env=json.dumps({"GREETING": "hi"}), stdin="there\n")
    done = await wait_done(stack.stub, [argv, shell])
    assert {d.status for d in done.values()} == {"completed"}

    found = await status(stack, argv)
    assert (found.task_id, found.status, found.error) == (argv, "completed", "")
    assert found.result["stdout"] == "hello world\n" and found.result["exit_code"] == "0"
    assert found.result["cached"] == "false"
    assert (found.attempts, found.task_class, found.priority) == (1, "cpu_short", 0)
    assert 0 < found.submitted_at <= found.started_at <= found.completed_at
    assert found.duration_ms > 0
    shelled = await status(stack, shell)
    assert shelled.result["stdout"] == "hi there\n" and shelled.result["stderr"] == "oops\n"

    async def removed() -> bool:
        return not await stack.task_containers() & {argv, shell}
    await eventually(removed, "the task containers to be removed")


async def test_the_same_id_and_content_again_is_the_same_task(stack: Stack) -> None:
    task_id = new_id("idem")
    first = await submit(stack.stub, task_id, "echo once", priority=3)
    again = await submit(stack.stub, task_id, "echo once", priority=3)
    assert first.success and again.success and first.task_id == again.task_id == task_id
    await wait_done(stack.stub, [task_id])
    after = await submit(stack.stub, task_id, "echo once", priority=3)
    assert after.success and after.task_id == task_id
    found = await status(stack, task_id)
    # Accepted three times, run once: still the first (and only) attempt's result.
    assert (found.status, found.attempts, found.result["stdout"]) == ("completed", 1, "once\n")

    for different in (task_request(task_id, "echo twice", priority=3),
                      task_request(task_id, "echo once", priority=4),
                      task_request(task_id, "echo once", priority=3, task_class="cpu_long")):
        error = await rpc_error(stack.stub.SubmitTask(different, timeout=30))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        assert task_id in (error.details() or "")


async def test_an_empty_id_gets_a_generated_one(stack: Stack) -> None:
    first = await submit(stack.stub, "", "true")
    second = await submit(stack.stub, "", "true")
    assert first.success and second.success
    assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", first.task_id)
    assert first.task_id != second.task_id
    await wait_done(stack.stub, [first.task_id, second.task_id])


@pytest.mark.parametrize("bad_id", ["has space", "x" * 129, "../etc/passwd", "a/b", "é"])
async def test_a_bad_id_is_invalid_argument_naming_the_id(stack: Stack, bad_id: str) -> None:
    error = await rpc_error(stack.stub.SubmitTask(task_request(bad_id), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("id must be"), error.details()


async def test_unknown_class_and_slurm_without_slurm_are_refused(stack: Stack) -> None:
    unknown = await rpc_error(stack.stub.SubmitTask(
        task_request(new_id(), task_class="quantum"), timeout=30))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'quantum'" in (unknown.details() or "") and "cpu_short" in (unknown.details() or "")

    slurm_id = new_id("slurm")
    slurm = await rpc_error(stack.stub.SubmitTask(
        task_request(slurm_id, task_class="gpu_slurm"), timeout=30))
    assert slurm.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Slurm" in (slurm.details() or "")
    # Refused before it was stored.
    missing = await rpc_error(stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=slurm_id), timeout=30))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_control_keys_are_invalid_argument(stack: Stack) -> None:
    for payload in ({"timeout_seconds": "soon"}, {"max_attempts": "-1"}):
        error = await rpc_error(stack.stub.SubmitTask(
            task_request(new_id(), control=payload), timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"payload.{next(iter(payload))}" in (error.details() or "")


async def test_a_full_backlog_is_resource_exhausted(stack: Stack) -> None:
    held = [new_id("held"), new_id("held")]
    for task_id in held:
        assert (await submit(stack.stub, task_id, task_class="parked")).success
    refused = await rpc_error(stack.stub.SubmitTask(
        task_request(new_id(), task_class="parked"), timeout=30))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_backlog" in (refused.details() or "")
    # Resubmitting a task already queued is not a new one: it is accepted.
    assert (await submit(stack.stub, held[0], task_class="parked")).success
    # The limit is per class: others still take work.
    other = new_id("other")
    assert (await submit(stack.stub, other)).success
    await wait_done(stack.stub, [other])
    # Cancelling one makes room again.
    cancelled = await stack.stub.CancelTask(pb.CancelTaskRequest(task_id=held[0]), timeout=30)
    assert cancelled.success
    assert (await submit(stack.stub, new_id("held"), task_class="parked")).success


async def test_unknown_task_is_not_found(stack: Stack) -> None:
    unknown = new_id("ghost")
    error = await rpc_error(stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=unknown), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND and unknown in (error.details() or "")
    empty = await rpc_error(stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(), timeout=30))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_non_zero_exit_fails_the_task_with_its_code(stack: Stack) -> None:
    plain, retried = new_id("exit"), new_id("retry")
    retries = pb.GetMetricsRequest(metric_names=["retries.cpu_short"])
    before = (await stack.stub.GetMetrics(retries, timeout=30)).metrics["retries.cpu_short"]
    await submit(stack.stub, plain, "echo partial; exit 3")
    await submit(stack.stub, retried, "exit 4", control={"retry_on_failure": "true"},
                 max_attempts=2)
    done = await wait_done(stack.stub, [plain, retried])
    assert (done[plain].status, done[plain].error) == ("failed", "exit code 3")
    found = await status(stack, plain)
    assert (found.status, found.error, found.attempts) == ("failed", "exit code 3", 1)
    assert found.result["exit_code"] == "3" and found.result["stdout"] == "partial\n"
    # Retried only because the payload asked, and only up to max_attempts.
    again = await status(stack, retried)
    assert (again.status, again.error, again.attempts) == ("failed", "exit code 4", 2)
    after = (await stack.stub.GetMetrics(retries, timeout=30)).metrics["retries.cpu_short"]
    assert after - before == 1


async def test_timeouts_come_from_the_request_or_the_payload(stack: Stack) -> None:
    by_field, by_payload = new_id("tfield"), new_id("tpayload")
    await submit(stack.stub, by_field, "echo started; sleep 60", timeout_seconds=1)
    await submit(stack.stub, by_payload, "sleep 60", control={"timeout_seconds": "1"})
    done = await wait_done(stack.stub, [by_field, by_payload], timeout=60)
    for task_id in (by_field, by_payload):
        assert done[task_id].status == "failed"
        assert done[task_id].error.startswith("timed out after 1 s"), done[task_id].error
        assert done[task_id].result["timed_out"] == "true"
