"""The original's workflow HTTP routes against real daemons and containers: the composer's typed
graph saved with POST /workflows and run end to end with POST /workflows/{id}/runs (its
signature node run by the class's handler, its verifier in a container, reward, deployment and
a parallel branch), the run record read back from /workflow-runs/{id} in the original's shape;
every route with good and bad input, with and without the token; a training node on the real
Slurm cluster; idempotency keys scoped to their workflow over gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb

from tests.docker_support import TEST_IMAGE
from tests.orchestrator_support import Stack, new_id, orchestrator_stack, rpc_error
from tests.slurm_support import start_cluster

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "composer_workflow.json"
TOKEN = "wf-token-" + new_id()
# cpu_short runs domain payloads (a signature node's) with this handler: it prints the payload.
HANDLER = (f'[workload_classes.cpu_short.handler]\nimage = "{TEST_IMAGE}"\n'
           'command = ["sh", "-c", "cat; echo"]\n')
RUN_KEYS = {"id", "workflow_id", "workflow_name", "workflow_version", "status", "created_at",
            "updated_at", "completed_at", "input", "metadata", "idempotency_key", "steps"}
STEP_KEYS = {"node_id", "name", "type", "status", "attempts", "started_at", "completed_at",
             "result", "error"}


def composer(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(FIXTURE.read_text())
    document.update(changes)
    return document


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-http-workflows")
    async with orchestrator_stack(workdir, orchestrator_env={"ORCHESTRATOR_AUTH_TOKEN": TOKEN},
                                  start=False) as started:
        with started.env_manager_config.open("a") as config:
            config.write(HANDLER)
        await started.start_env_manager()
        await started.start_orchestrator()
        yield started


async def call(stack: Stack, method: str, path: str, body: object = None, *,
               token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, Any]:
    return await stack.http(method, path, body=body, token=token, raw=raw)


async def wait_run(stack: Stack, run_id: str, timeout: float = 120) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            code, run = await call(stack, "GET", f"/workflow-runs/{run_id}")
            assert code == 200, run
            if run["status"] in ("succeeded", "failed", "cancelled"):
                assert isinstance(run, dict)
                return run
            await asyncio.sleep(0.2)


async def test_a_composer_workflow_runs_end_to_end(stack: Stack) -> None:
    code, saved = await call(stack, "POST", "/workflows", composer())
    assert code == 201, saved
    workflow_id = saved["id"]
    assert workflow_id.startswith("wf-") and len(workflow_id) == 19
    int(workflow_id[3:], 16)
    sent = composer()
    for key in ("name", "description", "tags", "tenant", "version", "nodes", "edges"):
        assert saved[key] == sent[key], key
    assert saved["revision"] == 1 and saved["created_at"].endswith("Z")

    code, run = await call(stack, "POST", f"/workflows/{workflow_id}/runs",
                           {"idempotency_key": "k1", "input": {"question": "2+2?", "n": [4]},
                            "metadata": {"who": "test"}})
    assert code == 201, run
    assert set(run) >= RUN_KEYS and run["status"] in ("pending", "running")
    final = await wait_run(stack, run["id"])
    assert final["status"] == "succeeded", json.dumps(final, indent=1)
    assert (final["workflow_id"], final["workflow_name"], final["workflow_version"]) == (
        workflow_id, sent["name"], "1.2.0")
    assert final["input"] == {"question": "2+2?", "n": [4]}
    assert final["metadata"] == {"who": "test"} and final["idempotency_key"] == "k1"
    assert final["completed_at"] and final["updated_at"]
    steps = {step["node_id"]: step for step in final["steps"]}
    assert set(steps) == {"answer", "check", "score", "ship", "lint", "note"}
    for step in steps.values():
        assert set(step) >= STEP_KEYS and step["status"] == "succeeded", step
        assert step["attempts"] == 1 and step["completed_at"]
    assert steps["answer"]["name"] == "Answer the question"
    assert steps["answer"]["type"] == "signature"
    # The handler printed the signature payload: the config plus the original's keys.
    payload = json.loads(steps["answer"]["result"]["stdout"])
    assert payload["prompt"] == "question -> answer" and payload["step_kind"] == "signature"
    assert (payload["workflow_id"], payload["workflow_run_id"], payload["node_id"]) == (
        workflow_id, run["id"], "answer")
    # The handler gets JSON values decoded (as the original's runner did), or as JSON text.
    given = payload["input"]
    assert (json.loads(given) if isinstance(given, str) else given) == {
        "question": "2+2?", "n": [4]}
    assert steps["answer"]["task_id"] == f"{run['id']}-answer"
    assert "VERIFIED" in steps["check"]["result"]["stdout"]
    assert steps["score"]["result"] == sent["nodes"][2]["reward"]
    assert steps["ship"]["result"] == sent["nodes"][3]["deployment"]
    assert steps["note"]["result"] == {"message": "linted", "level": 2}
    # The parallel branch did not wait for the other one.
    assert steps["lint"]["started_at"] <= steps["check"]["started_at"]

    code, again = await call(stack, "POST", f"/workflows/{workflow_id}/runs",
                             {"idempotency_key": "k1"})
    assert (code, again["id"]) == (200, run["id"])
    code, runs = await call(stack, "GET", f"/workflows/{workflow_id}/runs?limit=5")
    assert code == 200 and [item["id"] for item in runs["items"]] == [run["id"]]


async def test_a_failed_success_signal_fails_the_run_and_skips_the_rest(stack: Stack) -> None:
    document = composer()
    document["nodes"][1]["verifier"]["success_signal"] = "NEVER-PRINTED"
    code, saved = await call(stack, "POST", "/workflows", document)
    assert code == 201, saved
    code, run = await call(stack, "POST", f"/workflows/{saved['id']}/runs", {})
    assert code == 201, run
    final = await wait_run(stack, run["id"])
    steps = {step["node_id"]: step for step in final["steps"]}
    assert final["status"] == "failed"
    assert steps["check"]["status"] == "failed"
    assert "success_signal 'NEVER-PRINTED' not found in stdout" in steps["check"]["error"]
    assert steps["score"]["status"] == steps["ship"]["status"] == "skipped"
    assert steps["note"]["status"] == "succeeded"  # the independent branch carried on


async def test_workflow_routes_good_and_bad(stack: Stack) -> None:
    workflow_id = new_id("wf-routes")
    code, saved = await call(stack, "POST", "/workflows", composer(id=workflow_id))
    assert (code, saved["id"]) == (201, workflow_id)
    code, same = await call(stack, "POST", "/workflows", composer(id=workflow_id))
    assert (code, same["revision"]) == (200, 1)  # the same spec: no new version
    code, got = await call(stack, "GET", f"/workflows/{workflow_id}")
    assert code == 200 and got == same
    code, listed = await call(stack, "GET", "/workflows")
    summary = next(item for item in listed["items"] if item["id"] == workflow_id)
    assert (summary["node_count"], summary["edge_count"], summary["tenant"]) == (6, 4, "acme")
    assert listed["items"][0]["id"] == workflow_id  # newest first

    await asyncio.sleep(0.01)
    changed = composer(name="renamed")
    changed["nodes"] = changed["nodes"][4:]
    changed["edges"] = changed["edges"][3:]
    code, replaced = await call(stack, "PUT", f"/workflows/{workflow_id}", changed)
    assert code == 200, replaced
    assert (replaced["revision"], replaced["name"]) == (2, "renamed")
    assert replaced["created_at"] == saved["created_at"]
    assert replaced["updated_at"] > saved["updated_at"]
    code, history = await call(stack, "GET", f"/workflows/{workflow_id}/history")
    assert code == 200
    assert [(item["revision"], item["name"]) for item in history["items"]] == [
        (2, "renamed"), (1, saved["name"])]
    assert history["items"][1]["nodes"] == composer()["nodes"]

    # Our steps form is the same model over HTTP.
    code, steps = await call(stack, "POST", "/workflows", {
        "name": "steps form", "steps": [{"id": "a", "payload": {"command": "echo hi"}}]})
    assert code == 201 and steps["steps"][0]["id"] == "a", steps
    code, run = await call(stack, "POST", f"/workflows/{steps['id']}/runs",
                           {"input": {"x": "1"}})
    final = await wait_run(stack, run["id"])
    assert final["status"] == "succeeded" and final["steps"][0]["type"] == "task"
    assert final["steps"][0]["result"]["stdout"] == "hi\n"

    bad: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/workflows", composer(name=""), 400, "name is required"),
        ("POST", "/workflows", {"nodes": [{"id": "s", "type": "signature", "signature": {}}],
                                "name": "x"}, 400, "node 's'.signature.prompt is required"),
        ("POST", "/workflows", [1], 400, "body must be a JSON object"),
        ("POST", "/workflows", composer(id="bad/id"), 400, "workflow id 'bad/id' is invalid"),
        ("PUT", "/workflows/" + new_id("ghost"), composer(), 404, "not found"),
        ("PUT", f"/workflows/{workflow_id}", composer(id="other"), 400,
         "differs from the id 'other'"),
        ("GET", "/workflows/" + new_id("ghost"), None, 404, "not found"),
        ("GET", "/workflows/" + new_id("ghost") + "/history", None, 404, "not found"),
        ("GET", "/workflows/" + new_id("ghost") + "/runs", None, 404, "not found"),
        ("POST", "/workflows/" + new_id("ghost") + "/runs", {}, 404, "not found"),
        ("GET", f"/workflows/{workflow_id}/runs?limit=0", None, 400, "limit"),
        ("GET", f"/workflows/{workflow_id}/runs?limit=x", None, 400, "limit"),
        ("POST", f"/workflows/{workflow_id}/runs", {"input": []}, 400,
         "input must be a JSON object"),
        ("POST", f"/workflows/{workflow_id}/runs", {"idempotency_key": 5}, 400,
         "idempotency_key must be a string"),
        ("POST", f"/workflows/{workflow_id}/runs", {"inputs": {}}, 400,
         "unknown keys: inputs"),
        ("GET", "/workflow-runs/run-" + "0" * 32, None, 404, "not found"),
        ("DELETE", f"/workflows/{workflow_id}", None, 405, "use GET, PUT"),
        ("PUT", "/workflows", {}, 405, "use GET, POST"),
        ("POST", "/workflow-runs/x", {}, 405, "use GET"),
    ]
    for method, path, body, status, message in bad:
        code, answer = await call(stack, method, path, body)
        assert (code, answer.get("success")) == (status, False), (method, path, answer)
        assert message in answer["error"], (method, path, answer)
    for raw, message in ((b"{nope", "body"), (b"[" * 100 + b"]" * 100, "deep")):
        code, answer = await call(stack, "POST", "/workflows", raw=raw)
        assert code == 400 and message in answer["error"], answer
    code, answer = await call(stack, "POST", "/workflows", raw=b" " * (1024 * 1024 + 1))
    assert code == 413 and "max_payload_bytes" in answer["error"]


async def test_every_workflow_route_needs_the_token(stack: Stack) -> None:
    routes = [("GET", "/workflows"), ("POST", "/workflows"), ("GET", "/workflows/x"),
              ("PUT", "/workflows/x"), ("GET", "/workflows/x/history"),
              ("POST", "/workflows/x/runs"), ("GET", "/workflows/x/runs"),
              ("GET", "/workflow-runs/x"), ("DELETE", "/workflows/x")]
    for method, path in routes:
        for token in (None, "wrong"):
            code, answer = await call(stack, method, path, composer(), token=token)
            assert code == 401 and "bearer token" in answer["error"], (method, path, answer)


async def test_idempotency_keys_are_scoped_to_their_workflow_over_grpc(stack: Stack) -> None:
    spec = json.dumps({"steps": [{"id": "a", "payload": {"command": "true"}}]}).encode()
    auth = (("authorization", f"Bearer {TOKEN}"),)
    ids = [new_id("scoped"), new_id("scoped")]
    for workflow_id in ids:
        made = await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
            id=workflow_id, name="n", spec=spec), metadata=auth, timeout=30)
        assert made.success and made.workflow_id == workflow_id
    key = new_id("key")
    runs = [await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
        workflow_id=workflow_id, idempotency_key=key), metadata=auth, timeout=30)
        for workflow_id in ids]
    assert all(run.created and run.success for run in runs)
    assert runs[0].run_id != runs[1].run_id
    again = await stack.stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
        workflow_id=ids[1], idempotency_key=key), metadata=auth, timeout=30)
    assert (again.run_id, again.created) == (runs[1].run_id, False)
    # A typed graph over gRPC, with no id: one is made and returned.
    made = await stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
        spec=FIXTURE.read_bytes()), metadata=auth, timeout=30)
    assert made.workflow_id.startswith("wf-") and made.version == 1
    nameless = await rpc_error(stack.stub.CreateWorkflow(pb.CreateWorkflowRequest(
        spec=json.dumps(composer(name="")).encode()), metadata=auth, timeout=30))
    assert nameless.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name is required" in (nameless.details() or "")


async def test_a_training_node_runs_on_slurm(tmp_path: Path) -> None:
    start_cluster()
    document = {"name": "train", "nodes": [
        {"id": "learn", "type": "training", "training": {"method": "grpo", "skill": "qa"}},
        {"id": "tuned", "type": "training", "training": {
            "method": "sft", "skill": "qa", "command": "echo custom-$TRAINING_METHOD"}},
        {"id": "done", "type": "custom", "custom": {"ok": True}}],
        "edges": [{"source": "learn", "target": "done"}, {"source": "tuned", "target": "done"}]}
    async with orchestrator_stack(tmp_path, start=False) as stack:
        with stack.orchestrator_config.open("a") as config:
            config.write('[slurm]\nenabled = true\npoll_interval = "200ms"\n'
                         'training_command = ["sh", "-c", "echo trained-$TRAINING_SKILL; '
                         'cat"]\n')
        await stack.start_env_manager()
        await stack.start_orchestrator()
        code, saved = await stack.http("POST", "/workflows", body=document)
        assert code == 201, saved
        code, run = await stack.http("POST", f"/workflows/{saved['id']}/runs",
                                     body={"input": {"lr": 0.1}})
        assert code == 201, run
        async with asyncio.timeout(180):
            while run["status"] not in ("succeeded", "failed"):
                await asyncio.sleep(0.3)
                code, run = await stack.http("GET", f"/workflow-runs/{run['id']}")
        steps = {step["node_id"]: step for step in run["steps"]}
        assert run["status"] == "succeeded", json.dumps(run, indent=1)
        learn = steps["learn"]["result"]
        assert learn["stdout"].startswith("trained-qa\n") and learn["job_id"].isdigit()
        assert json.loads(learn["stdout"].split("\n", 1)[1])["input"] == {"lr": 0.1}
        assert steps["tuned"]["result"]["stdout"] == "custom-sft\n"
        assert steps["learn"]["class"] == "gpu_slurm"


async def test_a_training_node_without_a_command_is_refused_without_training_command(
        stack: Stack) -> None:
    code, answer = await call(stack, "POST", "/workflows", {"name": "t", "nodes": [
        {"id": "learn", "type": "training", "training": {"method": "m", "skill": "s"}}]})
    assert code == 400 and "training_command" in answer["error"], answer




async def test_a_signature_node_in_a_class_without_handler_is_refused(tmp_path: Path) -> None:
    document = {"name": "no handler", "nodes": [
        {"id": "ask", "type": "signature", "signature": {"prompt": "q -> a"}}]}
    async with orchestrator_stack(tmp_path) as stack:
        # The class's contract is learnt from env-manager soon after start; until then a
        # submit (and so a create) is accepted.
        async with asyncio.timeout(60):
            while True:
                code, answer = await stack.http("POST", "/workflows",
                                                body={**document, "id": new_id("nohandler")})
                if code != 201:
                    break
                await asyncio.sleep(0.5)
        assert code == 400, answer
        assert "node 'ask' (signature)" in answer["error"] and "handler" in answer["error"]
