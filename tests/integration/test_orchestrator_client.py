"""OrchestratorClient end to end: a real orchestrator dispatching to a real env-manager, whose
task containers (busybox) run on the real Docker engine.

Each test gets its own pair of daemons (free ports, own stack name, data under tmp_path); task
containers are removed by the stack's label afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import aiodocker
import pytest
from agent_infra.client import (
    AlreadyExists,
    ConnectionConfig,
    InfraUnavailable,
    InvalidArgument,
    NotFound,
    OrchestratorClient,
    SystemEvent,
    TaskResult,
    WorkflowStatus,
)
from agent_infra.client.orchestrator import ORCHESTRATOR
from agent_infra.wire import orchestrator_pb2

from tests.daemon_support import free_port
from tests.infra_support import Pair, daemon_pair

T = TypeVar("T")


@contextlib.asynccontextmanager
async def orchestrator(tmp_path: Path) -> AsyncIterator[tuple[Pair, OrchestratorClient]]:
    async with daemon_pair(tmp_path) as pair, OrchestratorClient(
            pair.orchestrator.grpc_addr) as client:
        yield pair, client


def echo(text: str) -> dict[str, object]:
    return {"command": ["sh", "-c", 'printf "%s" "$TEXT"'], "env": {"TEXT": text}}


def sleeper(seconds: int = 60) -> dict[str, object]:
    return {"command": ["sleep", str(seconds)]}


async def collect(stream: AsyncIterator[T], timeout: float = 60.0) -> list[T]:
    async with asyncio.timeout(timeout):
        return [item async for item in stream]


async def wait_running(client: OrchestratorClient, task_id: str) -> None:
    async with asyncio.timeout(60):
        async for item in client.stream_task_results(task_id, include_completed=True):
            if item.status == "running":
                return
    raise AssertionError(f"{task_id} never ran")


# --- tasks ----------------------------------------------------------------------------------


async def test_submit_run_and_result_decoding(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        # The payload's dict (env) and list (command) reach env-manager as JSON it can read:
        # the task would fail on Python repr.
        data = '{"n": 5, "items": [1, 2], "name": "x"}'
        payload = {"command": ["sh", "-c", 'printf "%s" "$DATA"; printf "plain words" >&2'],
                   "env": {"DATA": data}}
        submitted = await client.submit_task("t-roundtrip", payload, priority=3,
                                             workflow_id="wf-x", timeout_seconds=60)
        assert (submitted.success, submitted.task_id, submitted.error) == (True, "t-roundtrip", "")
        final = await client.wait_for_task("t-roundtrip", timeout=60)
        assert final.status == "completed", final
        assert final.result["stdout"] == data  # the wire's strings, unchanged
        assert final.result["exit_code"] == "0"
        decoded = final.decoded_result
        assert decoded["stdout"] == {"n": 5, "items": [1, 2], "name": "x"}  # a dict stays a dict
        assert decoded["exit_code"] == 0  # a number stays a number
        assert decoded["stderr"] == "plain words"  # plain text stays plain
        assert final.finished and final.succeeded
        assert (final.task_class, final.priority, final.workflow_id, final.attempts) == (
            "cpu_short", 3, "wf-x", 1)
        assert 0 < final.submitted_at <= final.started_at <= final.completed_at
        assert final.completed_at <= time.time() + 1
        assert final.duration_ms > 0
        assert final.error == ""


async def test_plain_string_payload_values_are_sent_unquoted(tmp_path: Path,
                                                             docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        # A shell string command: sent as it is (no JSON quotes), run by env-manager's shell.
        await client.submit_task("t-shell", {"command": "echo 42"})
        final = await client.wait_for_task("t-shell", timeout=60)
        assert final.result["stdout"] == "42\n"
        assert final.decoded_result["stdout"] == 42
        status = await client.get_task_status("t-shell")
        assert status == final


async def test_failed_task_is_a_result_not_an_exception(tmp_path: Path,
                                                        docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        await client.submit_task("t-fail", {"command": ["sh", "-c", "exit 3"]}, max_attempts=1)
        final = await client.wait_for_task("t-fail", timeout=60)
        assert final.status == "failed" and final.finished and not final.succeeded
        assert final.decoded_result["exit_code"] == 3
        assert final.error


async def test_generated_ids_and_idempotent_submit(tmp_path: Path,
                                                   docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        generated = await client.submit_task("", echo("hi"))
        assert re.fullmatch(r"task-[0-9a-f]{32}", generated.task_id)
        again = await client.submit_task(generated.task_id, echo("hi"))
        assert again.task_id == generated.task_id  # same id, same content: the same task
        with pytest.raises(AlreadyExists) as caught:
            await client.submit_task(generated.task_id, echo("something else"))
        assert generated.task_id in caught.value.details
        assert caught.value.code == "ALREADY_EXISTS"
        await client.wait_for_task(generated.task_id, timeout=60)


async def test_stream_task_results(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        await client.submit_task("t-a", echo("a"))
        await client.submit_task("t-b", echo("b"))
        items = await collect(client.stream_task_results(["t-a", "t-b"],
                                                         include_completed=True))
        assert all(isinstance(item, TaskResult) for item in items)
        final = {item.task_id: item for item in items if item.finished}
        assert set(final) == {"t-a", "t-b"}  # the stream ended once both had ended
        assert final["t-a"].decoded_result["stdout"] == "a"
        assert final["t-b"].task_class == "cpu_short" and final["t-b"].attempts == 1
        assert final["t-b"].completed_at > 0 and final["t-b"].duration_ms > 0
        # Finished tasks only come with include_completed; then the stream ends at once.
        replay = await collect(client.stream_task_results("t-a", include_completed=True))
        assert [(r.task_id, r.status) for r in replay] == [("t-a", "completed")]


async def test_cancel_task(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        await client.submit_task("t-long", sleeper())
        await wait_running(client, "t-long")
        cancelled = await client.cancel_task("t-long")
        assert (cancelled.success, cancelled.status, cancelled.error) == (True, "cancelled", "")
        again = await client.cancel_task("t-long")  # idempotent: still cancelled
        assert (again.success, again.status, again.error) == (True, "cancelled", "")
        final = await client.wait_for_task("t-long", timeout=30)
        assert final.status == "cancelled" and final.finished

        await client.submit_task("t-done", echo("x"))
        await client.wait_for_task("t-done", timeout=60)
        late = await client.cancel_task("t-done")
        assert (late.success, late.status) == (False, "completed")
        assert "already completed" in late.error


async def test_wait_for_task_times_out_naming_the_task(tmp_path: Path,
                                                       docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        await client.submit_task("t-slow", sleeper())
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=r"task 't-slow' did not finish within 1 s"):
            await client.wait_for_task("t-slow", timeout=1)
        assert time.monotonic() - began < 3
        await client.cancel_task("t-slow")


async def test_list_and_iter_tasks(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        workflow = f"wf-{uuid.uuid4().hex[:8]}"
        ids = [f"t-list-{i}" for i in range(5)]
        for task_id in ids:
            await client.submit_task(task_id, echo(task_id), workflow_id=workflow)
        await client.submit_task("t-other", echo("other"))
        for task_id in ids:
            await client.wait_for_task(task_id, timeout=60)

        first = await client.list_tasks(workflow_id=workflow, page_size=2)
        assert [t.task_id for t in first.tasks] == ids[::-1][:2]  # newest first
        assert first.next_page_token
        second = await client.list_tasks(workflow_id=workflow, page_size=2,
                                         page_token=first.next_page_token)
        assert [t.task_id for t in second.tasks] == ids[::-1][2:4]
        every = [t async for t in client.iter_tasks(workflow_id=workflow, page_size=2)]
        assert [t.task_id for t in every] == ids[::-1]
        summary = every[0]
        assert (summary.status, summary.task_class, summary.workflow_id, summary.attempts) == (
            "completed", "cpu_short", workflow, 1)
        assert summary.submitted_at > 0 and summary.completed_at >= summary.submitted_at
        assert [t async for t in client.iter_tasks(statuses=["failed"])] == []
        completed = {t.task_id async for t in client.iter_tasks(statuses="completed")}
        assert set(ids) <= completed


# --- workflows ------------------------------------------------------------------------------

SPEC = {"steps": [
    {"id": "greet", "payload": {"command": ["sh", "-c", 'printf "%s" "$MSG"'],
                                "env": {"MSG": "{{ input.msg }}"}}},
    {"id": "report", "depends_on": ["greet"],
     "payload": {"command": ["sh", "-c", """printf '{"n": %s, "msg": "%s"}' "$N" "$M" """],
                 "env": {"N": "{{ input.n }}", "M": "{{ steps.greet.result.stdout }}"}}},
]}


async def test_workflows(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        created = await client.create_workflow("wf-hello", SPEC, name="hello",
                                               description="greets")
        assert (created.success, created.workflow_id, created.version, created.error) == (
            True, "wf-hello", 1, "")
        # The same spec (as JSON text this time) keeps its version.
        same = await client.create_workflow("wf-hello", json.dumps(SPEC), name="hello")
        assert same.version == 1
        other = {"steps": [{"id": "only", "payload": {"command": ["true"]}}]}
        assert (await client.create_workflow("wf-other", json.dumps(other).encode())).version == 1
        listed = {w.workflow_id: w for w in await client.list_workflows()}
        assert listed["wf-hello"].total_steps == 2 and listed["wf-hello"].name == "hello"
        assert listed["wf-hello"].description == "greets" and listed["wf-hello"].created_at > 0
        assert listed["wf-other"].total_steps == 1

        run = await client.start_workflow_run("wf-hello", input={"msg": "hello", "n": 5})
        assert run.success and run.created and run.run_id.startswith("run-")
        assert re.fullmatch(r"key-[0-9a-f]{32}", run.idempotency_key)
        repeat = await client.start_workflow_run("wf-hello", idempotency_key=run.idempotency_key,
                                                 input={"msg": "hello", "n": 5})
        assert (repeat.run_id, repeat.created) == (run.run_id, False)
        # Keys are scoped to their workflow (as in the original): another workflow's run.
        other_run = await client.start_workflow_run("wf-other",
                                                     idempotency_key=run.idempotency_key)
        assert other_run.created and other_run.run_id != run.run_id

        updates = await collect(client.stream_workflow_status(run.run_id))
        assert all(isinstance(u, WorkflowStatus) for u in updates)
        last = updates[-1]
        assert (last.status, last.steps_completed, last.total_steps, last.error) == (
            "completed", 2, 2, ""), last
        assert last.finished
        assert last.decoded_output["report.stdout"] == {"n": 5, "msg": "hello"}
        assert last.output["report.stdout"] == '{"n": 5, "msg": "hello"}'


async def test_workflow_errors(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (_, client):
        with pytest.raises(InvalidArgument, match="step 'a' depends on unknown step 'nope'"):
            await client.create_workflow("wf-bad", {"steps": [
                {"id": "a", "depends_on": ["nope"], "payload": {}}]})
        with pytest.raises(NotFound, match="wf-missing"):
            await client.start_workflow_run("wf-missing")
        with pytest.raises(NotFound, match="run-nope"):
            await collect(client.stream_workflow_status("run-nope"))


# --- errors ---------------------------------------------------------------------------------


async def test_errors_map_to_the_hierarchy(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (pair, client):
        with pytest.raises(NotFound, match="'missing'") as caught:
            await client.get_task_status("missing")
        assert caught.value.address == pair.orchestrator.grpc_addr
        assert caught.value.method == "/orchestrator.v1.OrchestratorService/GetTaskStatus"
        with pytest.raises(NotFound):
            await client.cancel_task("missing")
        with pytest.raises(NotFound, match="missing"):
            await collect(client.stream_task_results(["missing"]))
        with pytest.raises(InvalidArgument, match="class 'no_such_class' is unknown"):
            await client.submit_task("t-x", echo("x"), task_class="no_such_class")
        with pytest.raises(InvalidArgument, match="id must be"):
            await client.submit_task("bad/id", echo("x"))
        with pytest.raises(InvalidArgument, match="statuses: unknown bogus"):
            await client.list_tasks(statuses=["bogus"])
        with pytest.raises(InvalidArgument, match="page_token"):
            await client.list_tasks(page_token="xyz")
        with pytest.raises(InvalidArgument, match="event_types: unknown 'bogus'"):
            await collect(client.stream_events(["bogus"]))
        with pytest.raises(TypeError, match=r"payload\['bad'\]"):
            await client.submit_task("t-y", {"bad": {1, 2}})


# --- metrics, events, health ----------------------------------------------------------------


async def test_metrics_events_and_health(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with orchestrator(tmp_path) as (pair, client):
        began = time.time()
        live: list[SystemEvent] = []

        async def follow() -> None:
            # From `began`: the stream may open before or after the task ends, and either way
            # delivers its completion once (replay, then live).
            async for event in client.stream_events(["task_completed"], since=began):
                if event.resource_id == "t-events":
                    live.append(event)
                    return

        follower = asyncio.ensure_future(follow())
        try:
            await client.submit_task("t-events", echo("e"))
            await client.wait_for_task("t-events", timeout=60)
            async with asyncio.timeout(30):
                await follower
        finally:
            follower.cancel()
        assert [(e.event_type, e.resource_id) for e in live] == [("task_completed", "t-events")]
        assert live[0].data["seq"].isdigit() and live[0].timestamp >= int(began)

        # Replay from a time (a datetime works as well as unix seconds): history, in order.
        replayed: list[SystemEvent] = []
        async with asyncio.timeout(30):
            async for event in client.stream_events(since=datetime.fromtimestamp(began - 1)):
                if event.resource_id == "t-events":
                    replayed.append(event)
                if event.event_type == "task_completed":
                    break
        assert [e.event_type for e in replayed] == [
            "task_submitted", "task_started", "task_completed"]

        metrics = await client.get_metrics()
        assert metrics.metrics and abs(metrics.timestamp - time.time()) < 60
        some = sorted(metrics.metrics)[:2]
        assert set((await client.get_metrics(some)).metrics) == set(some)

        health = await client.health()
        assert health.healthy and health.version
        assert health.services["store"] == "SERVING"
        assert health.services[f"env-manager {pair.env_manager.grpc_addr}"] == "SERVING"


# --- connecting -----------------------------------------------------------------------------


async def test_unreachable_orchestrator_fails_within_the_connect_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"
    client = OrchestratorClient(address, config=ConnectionConfig(connect_timeout=1))
    began = time.monotonic()
    with pytest.raises(InfraUnavailable, match=f"orchestrator at {address} within 1 s"):
        await client.health()
    assert time.monotonic() - began < 2.5


async def test_address_from_environment_read_when_the_client_is_made(
        tmp_path: Path, docker: aiodocker.Docker, monkeypatch: pytest.MonkeyPatch) -> None:
    async with daemon_pair(tmp_path) as pair:
        monkeypatch.setenv("ORCHESTRATOR_GRPC_ADDR", pair.orchestrator.grpc_addr)
        async with OrchestratorClient() as client:
            assert client.address == pair.orchestrator.grpc_addr
            assert (await client.health()).healthy


def test_every_rpc_is_retryable_on_unavailable() -> None:
    # Safe because the writes always carry ids (see client/orchestrator.py). Not the two sandbox
    # calls that carry none and would do it twice: CreateSandbox (a second sandbox) and
    # SandboxExec (the command run again).
    service = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
    assert set(ORCHESTRATOR.retryable_methods) == {m.name for m in service.methods} - {
        "CreateSandbox", "SandboxExec"}
