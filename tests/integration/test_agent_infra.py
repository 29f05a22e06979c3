"""AgentInfra and the shared-instance helpers against real daemons: the original API and its
two snippets, auto_start (attached and detached), the unreachable case, and sync use.

Daemons started by the code under test are always found again (pid files, `started_daemons`)
and, should a test fail half way, killed in its cleanup: nothing outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import pytest
from agent_infra.client import (
    AgentInfra,
    InfraUnavailable,
    OrchestratorClient,
    TaskStatus,
    ensure_infra,
    ensure_infra_sync,
    shutdown_infra,
    use_infra,
)

from tests.daemon_support import REPO, free_port, log_events, running_daemon
from tests.env_support import remove_stack_containers, stack_name
from tests.infra_support import (
    daemon_pair,
    env_manager_config,
    kill_leftover,
    pid_alive,
    wait_pid_gone,
)

NAMES = ("env-manager", "orchestrator")
# A developer's shell may point the client elsewhere; tests set what they need.
_STRIPPED = ("ENV_MANAGER_", "ORCHESTRATOR_", "NOTIFY_SOCKET")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_STRIPPED):
            monkeypatch.delenv(name)


def addresses() -> tuple[str, str]:
    return f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"


def recorded_pids(state_dir: Path) -> dict[str, int]:
    pids = {}
    for name in NAMES:
        with contextlib.suppress(OSError, ValueError):
            pids[name] = int((state_dir / f"{name}.pid").read_text())
    return pids


@contextlib.contextmanager
def reaped(state_dir: Path, pids: dict[str, int] | None = None) -> Iterator[None]:
    """Whatever happens in the block, no daemon recorded under state_dir survives it."""
    try:
        yield
    finally:
        for pid in [*recorded_pids(state_dir).values(), *(pids or {}).values()]:
            kill_leftover(pid)


@contextlib.asynccontextmanager
async def own_stack(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An env-manager config with a stack of its own; its task containers removed after."""
    stack = stack_name()
    try:
        yield stack, env_manager_config(tmp_path, stack)
    finally:
        await remove_stack_containers(stack)


async def run_python(code: str, env: dict[str, str], timeout: float = 180) -> str:
    """Run `code` (plain synchronous code) in a fresh interpreter; its stdout. Exit 0 or fail."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    child_env.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, env=child_env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode == 0, f"exit {process.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode()


# --- the original API, against running daemons --------------------------------------------------


async def test_original_snippet_and_api(tmp_path: Path, docker: aiodocker.Docker,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    async with daemon_pair(tmp_path) as pair:
        monkeypatch.setenv("ORCHESTRATOR_GRPC_ADDR", pair.orchestrator.grpc_addr)
        monkeypatch.setenv("ENV_MANAGER_GRPC_ADDR", pair.env_manager.grpc_addr)

        async with AgentInfra.start() as infra:
            print(await infra.health_check())

        printed = capsys.readouterr().out
        assert printed.startswith("{'healthy': True, 'version': ")
        assert "'store': 'SERVING'" in printed

        async with AgentInfra.start() as infra:
            assert infra.orchestrator.address == pair.orchestrator.grpc_addr
            assert infra.env.address == pair.env_manager.grpc_addr
            submitted = await infra.submit_task("t-orig", {"command": ["echo", "hi"]})
            assert submitted == {"success": True, "task_id": "t-orig", "error": ""}
            final = await infra.wait_for_task("t-orig", timeout=60)
            assert isinstance(final, TaskStatus) and final.status == "completed"
            status = await infra.get_task_status("t-orig")
            assert (status["task_id"], status["status"], status["error"]) == (
                "t-orig", "completed", "")
            assert status["result"]["stdout"] == "hi\n" and status["result"]["exit_code"] == 0
            assert status["result_payload"]["exit_code"] == "0"  # the wire's strings
            assert status["task_class"] == "cpu_short" and status["attempts"] == 1
            metrics = await infra.get_metrics()
            assert metrics and all(isinstance(v, float) for v in metrics.values())

            # run_task: submit and wait, the final result; a failure is a result too.
            ran = await infra.run_task(None, {"command": ["sh", "-c", "echo '[1, 2]'"]},
                                       workflow_id="wf-1", timeout=60)
            assert re.fullmatch(r"task-[0-9a-f]{32}", ran.task_id)
            assert ran.status == "completed" and ran.decoded_result["stdout"] == [1, 2]
            assert ran.workflow_id == "wf-1"
            failed = await infra.run_task("t-fails", {"command": ["false"]}, timeout=60,
                                          max_attempts=1)
            assert failed.status == "failed" and failed.decoded_result["exit_code"] == 1

            # wait_for_task's timeout names the task; cancel ends it.
            await infra.submit_task("t-sleeps", {"command": ["sleep", "60"]}, priority=1)
            with pytest.raises(TimeoutError, match=r"'t-sleeps' did not finish within 0\.5 s"):
                await infra.wait_for_task("t-sleeps", timeout=0.5)
            assert (await infra.cancel_task("t-sleeps")).status == "cancelled"
            results = [r async for r in infra.stream_task_results(
                ["t-orig", "t-sleeps"], include_completed=True)]
            assert {(r.task_id, r.status) for r in results} == {
                ("t-orig", "completed"), ("t-sleeps", "cancelled")}

            events = []
            async for event in infra.stream_events(["task_cancelled"], since=1):
                events.append(event)
                break
            assert events[0].resource_id == "t-sleeps"

            spec = {"steps": [{"id": "one", "payload": {"command": ["echo", "{{ input.x }}"]}}]}
            created = await infra.create_workflow("wf-one", spec, name="one")
            assert created.success and created.version == 1
            run = await infra.start_workflow_run("wf-one", input={"x": 7})
            updates = [u async for u in infra.watch_workflow_run(run.run_id)]
            assert updates[-1].status == "completed"
            assert updates[-1].decoded_output["one.stdout"] == 7

            # infra.env: the env-manager client (no services in this stack's config).
            assert await infra.env.get_services_status() == {}
            availability = await infra.env.get_resource_availability("cpu_short")
            assert availability.capacity == 2

        infra = await AgentInfra.start()  # awaitable: a connected AgentInfra
        try:
            assert (await infra.health_check())["healthy"] is True
        finally:
            await infra.close()


# --- unreachable -------------------------------------------------------------------------------


async def test_unreachable_orchestrator_health_check_within_connect_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"
    infra = AgentInfra(orchestrator_address=address, connect_timeout=1)
    began = time.monotonic()
    health = await infra.health_check()
    elapsed = time.monotonic() - began
    assert elapsed < 2.5, elapsed
    assert health["healthy"] is False
    assert address in health["error"] and "within 1 s" in health["error"]
    assert (health["version"], health["services"]) == ("", {})
    await infra.close()

    began = time.monotonic()
    with pytest.raises(InfraUnavailable, match=f"orchestrator at {address}"):
        async with AgentInfra.start(orchestrator_address=address, connect_timeout=1):
            pass
    assert time.monotonic() - began < 2.5


async def test_env_manager_down_shows_in_services_not_an_exception(tmp_path: Path) -> None:
    dead_env = f"127.0.0.1:{free_port()}"
    args = ["--env-managers", dead_env, "--data-dir", str(tmp_path / "orch")]
    async with running_daemon("orchestrator", tmp_path, args=args) as orch:
        infra = await AgentInfra.start(orchestrator_address=orch.grpc_addr)
        try:
            health = await infra.health_check()
        finally:
            await infra.close()
    # healthy: the orchestrator takes and stores work (issue 11: as grpc.health.v1 "" says);
    # the endpoint that is down says so in services.
    assert health["healthy"] is True and health["version"]
    assert health["services"]["store"] == "SERVING"
    assert health["services"][f"env-manager {dead_env}"].startswith("UNAVAILABLE")


# --- auto_start --------------------------------------------------------------------------------


async def test_auto_start_starts_and_stops_the_daemons(tmp_path: Path,
                                                       docker: aiodocker.Docker) -> None:
    orch_addr, env_addr = addresses()
    state = tmp_path / "infra"
    async with own_stack(tmp_path) as (_, config):
        with reaped(state):
            async with AgentInfra.start(orchestrator_address=orch_addr,
                                        env_manager_address=env_addr, auto_start=True,
                                        env_manager_config=config, data_dir=state) as infra:
                started = {d.name: d for d in infra.started_daemons}
                assert set(started) == set(NAMES)
                assert started["orchestrator"].grpc_address == orch_addr
                assert started["env-manager"].grpc_address == env_addr
                pids = {name: d.pid for name, d in started.items()}
                assert recorded_pids(state) == pids
                assert all(os.getsid(pid) == pid for pid in pids.values())  # own sessions
                assert (await infra.health_check())["healthy"] is True
                final = await infra.run_task("t-auto", {"command": ["echo", "auto"]},
                                             timeout=60)
                assert final.decoded_result["stdout"] == "auto\n"
            for name, pid in pids.items():
                assert not pid_alive(pid), f"{name} (pid {pid}) still running"
            assert recorded_pids(state) == {}  # pid files removed
            assert (state / "orchestrator" / "orchestrator.sqlite3").exists()
            assert "stopped" in log_events((state / "orchestrator.log").read_text())
            assert "stopped" in log_events((state / "env-manager.log").read_text())


async def test_auto_start_never_touches_running_daemons(tmp_path: Path,
                                                        docker: aiodocker.Docker) -> None:
    async with daemon_pair(tmp_path) as pair:
        async with AgentInfra.start(orchestrator_address=pair.orchestrator.grpc_addr,
                                    env_manager_address=pair.env_manager.grpc_addr,
                                    auto_start=True, data_dir=tmp_path / "infra") as infra:
            assert infra.started_daemons == ()
            assert (await infra.health_check())["healthy"] is True
        assert pair.orchestrator.process.returncode is None
        assert pair.env_manager.process.returncode is None
        async with OrchestratorClient(pair.orchestrator.grpc_addr) as client:
            assert (await client.health()).healthy
        assert recorded_pids(tmp_path / "infra") == {}


async def test_auto_start_starts_only_what_is_missing(tmp_path: Path,
                                                      docker: aiodocker.Docker) -> None:
    env_addr = f"127.0.0.1:{free_port()}"
    state = tmp_path / "infra"
    async with own_stack(tmp_path) as (_, config), running_daemon(
            "orchestrator", tmp_path,
            args=["--env-managers", env_addr, "--data-dir", str(tmp_path / "orch")]) as orch:
        with reaped(state):
            async with AgentInfra.start(orchestrator_address=orch.grpc_addr,
                                        env_manager_address=env_addr, auto_start=True,
                                        env_manager_config=config, data_dir=state) as infra:
                assert [d.name for d in infra.started_daemons] == ["env-manager"]
                env_pid = infra.started_daemons[0].pid
                assert (await infra.health_check())["healthy"] is True
            assert not pid_alive(env_pid)
            assert orch.process.returncode is None  # the orchestrator was not ours to stop


async def test_auto_start_failure_reports_the_log_and_leaves_nothing(tmp_path: Path) -> None:
    orch_addr, env_addr = addresses()
    state = tmp_path / "infra"
    bad = tmp_path / "bad.toml"
    bad.write_text('[stack]\nmax_concurrent = "lots"\n')
    with reaped(state):
        began = time.monotonic()
        with pytest.raises(InfraUnavailable) as caught:
            async with AgentInfra.start(orchestrator_address=orch_addr,
                                        env_manager_address=env_addr, auto_start=True,
                                        env_manager_config=bad, data_dir=state):
                pass
        assert time.monotonic() - began < 30
        message = str(caught.value)
        assert "env-manager exited with code 2 before serving" in message
        assert "stack.max_concurrent" in message  # the daemon's own words, from its log
        assert str(state / "env-manager.log") in message
        # The orchestrator it had started alongside was stopped again.
        orch_log = (state / "orchestrator.log").read_text()
        assert "stopped" in log_events(orch_log)
        assert recorded_pids(state) == {}


async def test_auto_start_refuses_remote_addresses() -> None:
    with pytest.raises(InfraUnavailable, match="only a daemon on this machine"):
        await AgentInfra(orchestrator_address="192.0.2.1:50052",
                         env_manager_address="192.0.2.1:50100", auto_start=True,
                         connect_timeout=0.5).connect()


async def test_detached_start_snippet_leaves_the_daemons_running(
        tmp_path: Path, docker: aiodocker.Docker) -> None:
    orch_addr, env_addr = addresses()
    state = tmp_path / "infra"
    env = {"ORCHESTRATOR_GRPC_ADDR": orch_addr, "ENV_MANAGER_GRPC_ADDR": env_addr}
    async with own_stack(tmp_path) as (_, config):
        with reaped(state):
            # The original's snippet, with this test's config and state directory.
            out = await run_python(
                "import asyncio\n"
                "from agent_infra import AgentInfra\n"
                f"started = asyncio.run(AgentInfra.start(env_manager_config={str(config)!r}, "
                f"data_dir={str(state)!r}).start())\n"
                "print(sorted((d.name, d.pid) for d in started))\n", env)
            pids = recorded_pids(state)
            assert out.strip() == str(sorted(pids.items()))
            assert set(pids) == set(NAMES)
            # The process that started them has exited; they run on, in their own sessions.
            assert all(pid_alive(pid) and os.getsid(pid) == pid for pid in pids.values())
            async with AgentInfra.start(orchestrator_address=orch_addr,
                                        env_manager_address=env_addr) as infra:
                assert (await infra.health_check())["healthy"] is True
                final = await infra.run_task("t-up", {"command": ["echo", "up"]}, timeout=60)
                assert final.status == "completed"
            # Running it again starts nothing: both answer.
            again = await AgentInfra.start(orchestrator_address=orch_addr,
                                           env_manager_address=env_addr,
                                           data_dir=state).start()
            assert again == []
            # Stopped through their pids, gracefully.
            for pid in pids.values():
                os.kill(pid, 15)
            for name, pid in pids.items():
                assert wait_pid_gone(pid), f"{name} (pid {pid}) ignored SIGTERM"


# --- the shared instance -------------------------------------------------------------------------


async def test_shared_instance_per_loop(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with daemon_pair(tmp_path) as pair:
        kwargs = {"orchestrator_address": pair.orchestrator.grpc_addr,
                  "env_manager_address": pair.env_manager.grpc_addr}
        try:
            first = await ensure_infra(**kwargs)
            assert await ensure_infra() is first  # made once per loop; later args ignored
            async with use_infra() as used:
                assert used is first
            assert (await used.health_check())["healthy"] is True  # left open by use_infra
            # From plain sync code on another thread (its own loops), twice.
            for _ in range(2):
                health = await asyncio.to_thread(ensure_infra_sync, **kwargs)
                assert health["healthy"] is True
            assert await ensure_infra() is first  # this loop's instance is untouched
            # Called from inside a running loop, it runs on a helper thread.
            assert ensure_infra_sync(**kwargs)["healthy"] is True
        finally:
            await shutdown_infra()
        fresh = await ensure_infra(**kwargs)
        try:
            assert fresh is not first
            assert (await fresh.health_check())["healthy"] is True
        finally:
            await shutdown_infra()


SYNC_SCRIPT = """
import asyncio, json
from agent_infra.client import AgentInfra, ensure_infra, ensure_infra_sync, shutdown_infra

print(json.dumps(ensure_infra_sync()))
print(json.dumps(ensure_infra_sync()))

async def main():
    infra = await ensure_infra()
    status = await infra.health_check()
    await shutdown_infra()
    return status

print(json.dumps(asyncio.run(main())))
print(json.dumps(ensure_infra_sync()))

# One AgentInfra used from two loops in turn: each gets a channel of its own.
infra = AgentInfra()
print(json.dumps(asyncio.run(infra.health_check())))
print(json.dumps(asyncio.run(infra.health_check())))
asyncio.run(infra.close())
"""


async def test_ensure_infra_sync_from_plain_sync_code(tmp_path: Path,
                                                      docker: aiodocker.Docker) -> None:
    async with daemon_pair(tmp_path) as pair:
        out = await run_python(SYNC_SCRIPT, {
            "ORCHESTRATOR_GRPC_ADDR": pair.orchestrator.grpc_addr,
            "ENV_MANAGER_GRPC_ADDR": pair.env_manager.grpc_addr})
        reports = [json.loads(line) for line in out.splitlines()]
        assert len(reports) == 6
        assert all(report["healthy"] is True for report in reports), reports


async def test_ensure_infra_sync_auto_start_then_exit_leaves_nothing(
        tmp_path: Path, docker: aiodocker.Docker) -> None:
    orch_addr, env_addr = addresses()
    state = tmp_path / "infra"
    async with own_stack(tmp_path) as (_, config):
        with reaped(state):
            out = await run_python(
                "import json, pathlib\n"
                "from agent_infra import ensure_infra_sync\n"
                f"kw = dict(auto_start=True, env_manager_config={str(config)!r}, "
                f"data_dir={str(state)!r})\n"
                "print(json.dumps(ensure_infra_sync(**kw)))\n"
                f"pids = {{p.stem: int(p.read_text()) for p in "
                f"pathlib.Path({str(state)!r}).glob('*.pid')}}\n"
                "print(json.dumps(ensure_infra_sync(**kw)))\n"
                f"again = {{p.stem: int(p.read_text()) for p in "
                f"pathlib.Path({str(state)!r}).glob('*.pid')}}\n"
                "assert again == pids, (pids, again)\n"  # the second call started nothing
                "print(json.dumps(pids))\n",
                {"ORCHESTRATOR_GRPC_ADDR": orch_addr, "ENV_MANAGER_GRPC_ADDR": env_addr})
            first, second, pids = (json.loads(line) for line in out.splitlines())
            assert first["healthy"] is True and second["healthy"] is True
            assert set(pids) == set(NAMES)
            # The interpreter's exit stopped what the shared instance had started.
            for name, pid in pids.items():
                assert wait_pid_gone(pid, 5), f"{name} (pid {pid}) outlived its starter"
