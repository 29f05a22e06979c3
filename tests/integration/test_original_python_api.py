"""The original stack's Python API (`dspy_agent.infra`), called exactly as its callers did, with
only the import line changed, against real daemons: its keyword names and positional orders, its
environment variables and its return shapes (dicts), next to ours."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiodocker
import pytest
from agent_infra import (
    AgentInfra,
    InfraUnavailable,
    Metrics,
    OrchestratorClient,
    SubmitResult,
    ensure_infra,
    ensure_infra_sync,
    orchestrator_client,
    shutdown_infra,
    use_infra,
)

from tests.daemon_support import free_port
from tests.infra_support import daemon_pair

_STRIPPED = ("ENV_MANAGER_", "ORCHESTRATOR_", "NOTIFY_SOCKET", "DSPY_AGENT_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_STRIPPED):
            monkeypatch.delenv(name)


async def test_original_keywords_and_shapes(tmp_path: Path, docker: aiodocker.Docker,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async with daemon_pair(tmp_path) as pair:
        addr = pair.orchestrator.grpc_addr
        monkeypatch.setenv("ENV_MANAGER_GRPC_ADDR", pair.env_manager.grpc_addr)

        # The TypeError: AgentInfra.start(orchestrator_addr=..., auto_start_services=False)
        async with AgentInfra.start(orchestrator_addr=addr, auto_start_services=False) as infra:
            assert infra.orchestrator_addr == addr and infra.auto_start_services is False
            health = await infra.health_check()
            assert health["healthy"] is True and set(health) >= {"healthy", "version", "services"}
            submitted = await infra.submit_task("orig-1", {"command": ["echo", "hi"]},
                                                "cpu_short", 0)
            assert submitted == {"success": True, "task_id": "orig-1", "error": ""}
            final = await infra.wait_for_task("orig-1", timeout=60)
            assert final.status == "completed"
            status = await infra.get_task_status("orig-1")
            assert status["status"] == "completed" and status["result_payload"]["exit_code"] == "0"
            assert isinstance(await infra.get_metrics(), dict)

        # Positional, as the original's signature allowed; start_context; start_async/stop.
        infra = AgentInfra(addr, tmp_path, False, None)
        assert infra.workspace == tmp_path and infra.cli_path is None
        assert await infra.start_async() is infra
        assert (await infra.health_check())["healthy"] is True
        await infra.stop()
        async with AgentInfra.start_context(orchestrator_addr=addr,
                                           auto_start_services=False) as infra:
            assert (await infra.health_check())["healthy"] is True
        # The original's instance method start(): connects this instance.
        infra = AgentInfra(orchestrator_addr=addr, auto_start_services=False)
        assert await infra.start() is infra
        await infra.stop()

        # The shared-instance helpers with the original's positional/keyword names.
        first = await ensure_infra(False, orchestrator_addr=addr, workspace=str(tmp_path),
                                   cli_path=None)
        async with use_infra(False, orchestrator_addr=addr) as used:
            assert used is first and used.orchestrator_addr == addr
        await shutdown_infra()
        health = await asyncio.to_thread(
            ensure_infra_sync, False, orchestrator_addr=addr)
        assert health["healthy"] is True

        # OrchestratorClient: the original's positional order and dict-shaped answers, and ours.
        async with orchestrator_client(addr) as client:
            assert isinstance(client, OrchestratorClient)
            health = await client.health_check()
            assert health["healthy"] is True and isinstance(health["services"], dict)
            original = await client.submit_task("orig-2", "cpu_short",
                                                {"command": "echo two"}, 5, "wf-orig")
            assert isinstance(original, SubmitResult)
            assert original == {"success": True, "task_id": "orig-2", "error": ""}
            assert original["task_id"] == original.task_id == "orig-2"
            by_keyword = await client.submit_task(task_id="orig-3", task_class="cpu_short",
                                                  payload={"command": "true"}, priority=1)
            assert by_keyword["success"] is True
            ours = await client.submit_task("orig-4", {"command": "true"}, task_class="cpu_short")
            assert ours.success and dict(ours)["task_id"] == "orig-4"
            for task_id in ("orig-2", "orig-3", "orig-4"):
                assert (await client.wait_for_task(task_id, timeout=60)).status == "completed"
            task = await client.get_task_status("orig-2")
            assert task["workflow_id"] == "wf-orig" and task.priority == 5
            assert task["result"] == task["result_payload"] == task.result
            assert task["result"]["stdout"] == "two\n"
            results = [dict(r) async for r in client.stream_task_results(
                ["orig-2"], include_completed=True)]
            assert results[-1]["status"] == "completed" and "duration_ms" in results[-1]
            metrics = await client.get_metrics()
            assert isinstance(metrics, Metrics) and dict(metrics) == metrics.metrics
            some = next(iter(metrics))
            assert metrics[some] == metrics.metrics[some]
            async for event in client.stream_events(["task_submitted"], 1):
                assert event["event_type"] == "task_submitted" and "data" in event
                break
        with pytest.raises(TypeError, match="disagree"):
            AgentInfra(orchestrator_addr=addr, orchestrator_address="127.0.0.1:1")
        with pytest.raises(TypeError, match="keyword-only"):
            async with orchestrator_client(addr) as client:
                await client.submit_task("x", {"command": "true"},  # type: ignore[call-overload]
                                         "cpu_short")


async def test_skip_start_refuses_auto_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_AGENT_SKIP_START", "1")
    address = f"127.0.0.1:{free_port()}"
    infra = AgentInfra(orchestrator_addr=address, auto_start_services=True)
    assert infra.auto_start_services is False
    infra_fast = AgentInfra(orchestrator_addr=address, auto_start=True, connect_timeout=1)
    with pytest.raises(InfraUnavailable, match="DSPY_AGENT_SKIP_START"):
        await infra_fast.start_async()
    assert infra_fast.started_daemons == ()


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSPY_AGENT_SERVICE_TIMEOUT", "7.5")
    monkeypatch.setenv("DSPY_AGENT_CLI_PATH", str(tmp_path / "dspy-agent"))
    monkeypatch.setenv("DSPY_AGENT_RECONNECT_BACKOFF", "0.25")
    infra = AgentInfra()
    assert infra._start_timeout == 7.5
    assert infra.cli_path == tmp_path / "dspy-agent"
    assert infra.orchestrator._reconnect_backoff == 0.25
    assert AgentInfra(start_timeout=3)._start_timeout == 3
    monkeypatch.delenv("DSPY_AGENT_SERVICE_TIMEOUT")
    monkeypatch.delenv("DSPY_AGENT_RECONNECT_BACKOFF")
    defaults = AgentInfra()
    assert defaults._start_timeout == 60 and defaults.orchestrator._reconnect_backoff == 2.0
    for name in ("DSPY_AGENT_SERVICE_TIMEOUT", "DSPY_AGENT_RECONNECT_BACKOFF"):
        monkeypatch.setenv(name, "soon")
        with pytest.raises(ValueError, match=name):
            AgentInfra()
        monkeypatch.delenv(name)
