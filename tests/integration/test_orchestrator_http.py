"""The orchestrator's HTTP side end to end: GET /queue/status, POST /queue/submit (the same
validation, storage and auth as SubmitTask), against real daemons and containers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.orchestrator_support import (
    Stack,
    new_id,
    orchestrator_stack,
    rpc_error,
    submit,
    wait_done,
)

# Real daemons and containers; one event loop (and stack) for the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

CLASSES: dict[str, dict[str, int | str]] = {
    "held": {"concurrency": 0},
    "tiny": {"concurrency": 0, "max_backlog": 1},
}
STATUSES = {"pending", "running", "completed", "failed", "cancelled"}
ORIGINAL_KEYS = ("pending", "done", "submitted", "processed", "completed")
# A new task is 201 Created (test_post_submit_answers_201_then_200 holds the daemon to that);
# elsewhere only acceptance matters.
ACCEPTED = (200, 201)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-http")
    async with orchestrator_stack(workdir, classes=CLASSES) as started:
        yield started


async def queue_status(stack: Stack) -> dict[str, dict[str, int]]:
    code, body = await stack.http("GET", "/queue/status")
    assert code == 200, body
    assert set(body) == {"classes", "totals", *ORIGINAL_KEYS}
    classes: dict[str, dict[str, int]] = body["classes"]
    totals: dict[str, int] = body["totals"]
    assert all(set(counts) == STATUSES for counts in classes.values())
    assert totals == {s: sum(c[s] for c in classes.values()) for s in STATUSES}
    # The original's keys, from the same counts.
    done = totals["completed"] + totals["failed"] + totals["cancelled"]
    assert {key: body[key] for key in ORIGINAL_KEYS} == {
        "pending": totals["pending"], "done": done, "completed": totals["completed"],
        "submitted": sum(totals.values()), "processed": totals["running"] + done}
    return classes


async def test_queue_status_counts_per_class_and_totals(stack: Stack) -> None:
    before = await queue_status(stack)
    held = [new_id("held") for _ in range(2)]
    for task_id in held:
        await submit(stack.stub, task_id, task_class="held")
    ran = [new_id("ok"), new_id("fail")]
    await submit(stack.stub, ran[0], "true")
    await submit(stack.stub, ran[1], "exit 5")
    await wait_done(stack.stub, ran)
    await stack.stub.CancelTask(pb.CancelTaskRequest(task_id=held[1]), timeout=30)
    after = await queue_status(stack)

    def grew(cls: str, status: str) -> int:
        return after[cls][status] - before[cls][status]

    assert (grew("held", "pending"), grew("held", "cancelled")) == (1, 1)
    assert (grew("cpu_short", "completed"), grew("cpu_short", "failed")) == (1, 1)
    assert after["cpu_short"]["pending"] == after["cpu_short"]["running"] == 0
    assert {"cpu_short", "cpu_long", "gpu", "gpu_slurm", "held", "tiny"} <= set(after)


async def test_post_submit_stores_and_runs_the_task(stack: Stack) -> None:
    task_id = new_id("http")
    body = {"id": task_id, "class": "cpu_short", "payload": {"command": "echo via-http"}}
    code, answer = await stack.http("POST", "/queue/submit", body=body)
    assert code in ACCEPTED, answer
    assert {**answer, "status": "?", "task_status": "?"} == {
        "success": True, "task_id": task_id, "error": "", "created": True, "status": "?",
        "task_status": "?", "ok": True, "id": task_id}
    assert answer["status"] == answer["task_status"] in ("pending", "running"), answer
    code, again = await stack.http("POST", "/queue/submit", body=body)
    assert code in ACCEPTED, again
    assert (again["success"], again["task_id"], again["created"]) == (True, task_id, False)
    done = await wait_done(stack.stub, [task_id])
    assert done[task_id].result["stdout"] == "via-http\n"

    # Non-string payload values travel as JSON (an argv list here), never as a repr.
    listed = new_id("http-list")
    code, answer = await stack.http("POST", "/queue/submit", body={
        "id": listed, "payload": {"command": ["echo", "as", "argv"]}, "priority": 2})
    assert code in ACCEPTED, answer
    done = await wait_done(stack.stub, [listed])
    assert done[listed].result["stdout"] == "as argv\n"
    found = await stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=listed), timeout=30)
    assert (found.task_class, found.priority) == ("cpu_short", 2)

    # The same id submitted over gRPC with the same content is the same task.
    same = await submit(stack.stub, task_id, "echo via-http")
    assert same.success and same.task_id == task_id


async def test_post_submit_answers_201_then_200(stack: Stack) -> None:
    body = {"id": new_id("created"), "class": "held", "payload": {"command": "true"}}
    code, answer = await stack.http("POST", "/queue/submit", body=body)
    assert (code, answer["created"]) == (201, True), answer
    code, answer = await stack.http("POST", "/queue/submit", body=body)
    assert (code, answer["created"]) == (200, False), answer


async def test_post_submit_without_id_generates_one(stack: Stack) -> None:
    code, answer = await stack.http("POST", "/queue/submit",
                                    body={"class": "held", "payload": {}})
    assert code in ACCEPTED, answer
    generated = answer["task_id"]
    assert isinstance(generated, str) and generated
    found = await stack.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=generated),
                                           timeout=30)
    assert found.status == "pending"


@pytest.mark.parametrize(("body", "field"), [
    ({"id": "has space", "payload": {}}, "id"),
    ({"id": 7, "payload": {}}, "id"),
    ({"payload": ["echo"]}, "payload"),
    ({"priority": "high"}, "priority"),
    ({"class": 5}, "class"),
    ({"class": "quantum"}, "class"),
    ({"workflow_id": ["x"]}, "workflow_id"),
    ([1, 2], "body"),
])
async def test_post_submit_rejects_bad_input_naming_the_field(
        stack: Stack, body: object, field: str) -> None:
    code, answer = await stack.http("POST", "/queue/submit", body=body)
    assert code == 400, answer
    assert answer["success"] is False
    assert field in str(answer["error"]), answer


async def test_post_submit_rejects_a_body_that_is_not_json(stack: Stack) -> None:
    code, answer = await stack.http("POST", "/queue/submit", raw=b"{not json")
    assert code == 400 and "JSON" in str(answer["error"]), answer


async def test_post_submit_conflicts_and_refusals_have_their_codes(stack: Stack) -> None:
    task_id = new_id("conflict")
    code, _ = await stack.http("POST", "/queue/submit", body={
        "id": task_id, "class": "held", "payload": {"command": "true"}})
    assert code in ACCEPTED
    code, answer = await stack.http("POST", "/queue/submit", body={
        "id": task_id, "class": "held", "payload": {"command": "false"}})
    assert code == 409 and task_id in str(answer["error"]), answer
    code, answer = await stack.http("POST", "/queue/submit", body={"class": "gpu_slurm"})
    assert code == 412 and "Slurm" in str(answer["error"]), answer
    code, _ = await stack.http("POST", "/queue/submit", body={"class": "tiny"})
    assert code in ACCEPTED
    code, answer = await stack.http("POST", "/queue/submit", body={"class": "tiny"})
    assert code == 429 and "max_backlog" in str(answer["error"]), answer


async def test_a_token_guards_http_and_grpc_alike(tmp_path: Path) -> None:
    token = "s3cret-" + new_id()
    auth = (("authorization", f"Bearer {token}"),)
    async with orchestrator_stack(tmp_path, orchestrator_env={
            "ORCHESTRATOR_AUTH_TOKEN": token}) as stack:
        for presented in (None, "wrong"):
            code, answer = await stack.http("GET", "/queue/status", token=presented)
            assert code == 401, answer
        task_id = new_id("auth")
        body = {"id": task_id, "payload": {"command": "echo authorised"}}
        code, answer = await stack.http("POST", "/queue/submit", body=body)
        assert code == 401 and answer["success"] is False, answer
        # Refused before it was stored.
        missing = await rpc_error(stack.stub.GetTaskStatus(
            pb.GetTaskStatusRequest(task_id=task_id), metadata=auth, timeout=30))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        refused = await rpc_error(stack.stub.GetTaskStatus(
            pb.GetTaskStatusRequest(task_id=task_id), timeout=30))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED

        code, answer = await stack.http("POST", "/queue/submit", body=body, token=token)
        assert code in ACCEPTED, answer
        code, status = await stack.http("GET", "/queue/status", token=token)
        assert code == 200 and "classes" in status
        call = stack.stub.StreamTaskResults(pb.StreamTaskResultsRequest(
            task_ids=[task_id], include_completed=True), metadata=auth, timeout=120)
        final = [message async for message in call][-1]
        assert (final.status, final.result["stdout"]) == ("completed", "authorised\n")


# -- the original's routes and keys (issue 11) ------------------------------------------------

async def test_queue_status_original_keys_follow_the_work(stack: Stack) -> None:
    code, before = await stack.http("GET", "/queue/status")
    assert code == 200
    await queue_status(stack)  # the keys and their meaning
    held = new_id("orig-held")
    await submit(stack.stub, held, task_class="held")
    ran = new_id("orig-ran")
    await submit(stack.stub, ran, "true")
    await wait_done(stack.stub, [ran])
    code, after = await stack.http("GET", "/queue/status")
    assert code == 200
    grew = {key: after[key] - before[key] for key in ORIGINAL_KEYS}
    assert grew == {"pending": 1, "done": 1, "submitted": 2, "processed": 1, "completed": 1}


async def test_slurm_status_unknown_and_non_slurm_tasks_are_404(stack: Stack) -> None:
    code, answer = await stack.http("GET", "/slurm/status/no-such-task")
    assert code == 404 and "no-such-task" in answer["error"], answer
    assert answer["ok"] is False
    task_id = new_id("not-slurm")
    await submit(stack.stub, task_id, task_class="held")
    code, answer = await stack.http("GET", f"/slurm/status/{task_id}")
    assert code == 404 and "gpu_slurm" in answer["error"], answer
    async with aiohttp.ClientSession() as session, session.post(
            f"{stack.daemon.http_url}/slurm/status/{task_id}") as response:
        assert response.status == 405


async def test_health_says_ok_while_serving(stack: Stack) -> None:
    code, body = await stack.http("GET", "/health")
    assert code == 200
    assert (body["status"], body["healthy"], body["daemon"]) == ("ok", True, "orchestrator")


@pytest.mark.parametrize("size", [10, 100_000, 3 << 20, 6 << 20])
async def test_wrong_method_with_a_body_answers_405_and_keeps_the_connection(
        stack: Stack, size: int) -> None:
    connector = aiohttp.TCPConnector(limit=1)  # one connection: the next request reuses it
    async with aiohttp.ClientSession(connector=connector) as session:
        for method, path in (("POST", "/metrics"), ("PUT", "/queue/submit"),
                             ("POST", "/health"), ("DELETE", "/queue/status")):
            async with session.request(method, f"{stack.daemon.http_url}{path}",
                                       data=b"x" * size) as response:
                assert response.status == 405, (method, path)
                await response.read()
            async with session.get(f"{stack.daemon.http_url}/health") as response:
                assert response.status == 200


async def test_post_submit_body_is_bounded_by_max_payload(stack: Stack) -> None:
    big_id = new_id("big")
    big = {"id": big_id, "class": "held", "payload": {"command": "x" * (2 << 20)}}
    code, answer = await stack.http("POST", "/queue/submit", body=big)
    assert code == 413 and "limits.max_payload_bytes" in answer["error"], answer
    missing = await rpc_error(stack.stub.GetTaskStatus(
        pb.GetTaskStatusRequest(task_id=big_id), timeout=30))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_the_token_guards_every_route_i_own(tmp_path: Path) -> None:
    token = "tok-" + new_id()
    async with orchestrator_stack(tmp_path, orchestrator_env={
            "ORCHESTRATOR_AUTH_TOKEN": token}) as stack:
        task_id = new_id("tok")
        routes = [("GET", "/queue/status", None), ("GET", f"/slurm/status/{task_id}", None),
                  ("POST", "/queue/submit", {"id": task_id, "class": "held"})]
        for method, path, body in routes:
            for presented in (None, "wrong"):
                code, answer = await stack.http(method, path, body=body, token=presented)
                assert code == 401 and answer["ok"] is False, (method, path, answer)
        code, answer = await stack.http("POST", "/queue/submit", token=token, body={
            "id": task_id, "payload": {"command": "true"}})
        assert code == 201 and (answer["ok"], answer["id"]) == (True, task_id), answer
        code, answer = await stack.http("GET", "/queue/status", token=token)
        assert code == 200 and answer["submitted"] >= 1
        code, answer = await stack.http("GET", f"/slurm/status/{task_id}", token=token)
        assert code == 404 and "gpu_slurm" in answer["error"]
        code, answer = await stack.http("GET", "/slurm/status/absent", token=token)
        assert code == 404
        # Probes see the status without the token; the detail needs it.
        code, answer = await stack.http("GET", "/health")
        assert (code, answer) == (200, {"status": "ok"})
        code, answer = await stack.http("GET", "/health", token=token)
        assert code == 200 and answer["status"] == "ok" and "version" in answer
