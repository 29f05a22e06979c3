"""Every script in examples/ runs, as users run it (``python examples/X.py``), against a live stack.

One env-manager (a two-service busybox stack under a unique stack name, on free ports) and one
orchestrator dispatching to it serve the module. The examples find them through
ORCHESTRATOR_GRPC_ADDR / ENV_MANAGER_GRPC_ADDR, as documented. Each run has a time limit and
must exit 0 (run_task's exit status follows the task's); its output is checked for what the
example promises. Containers are removed by the stack's label afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from agent_infra.client import EnvManagerClient

from tests.daemon_support import REPO, free_port, running_daemon
from tests.docker_support import require_docker
from tests.env_support import busybox_service, config_text, remove_stack_containers, stack_name

# Some tests run several examples, each bounded by RUN_TIMEOUT.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

EXAMPLES = REPO / "examples"
# Generous for a slow 2-core machine shared with other test runs.
RUN_TIMEOUT = 240.0
_STRIPPED = ("ENV_MANAGER_", "ORCHESTRATOR_")


@dataclass
class Stack:
    env_manager: str
    orchestrator: str
    name: str


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (f"exit {self.code} after {self.seconds:.1f} s\n--- stdout\n{self.out}"
                f"--- stderr\n{self.err}")


def stack_services(cache_port: int, api_port: int) -> str:
    """cache (tcp check) <- api (http check), each publishing a free port."""
    return (busybox_service(
                "cache", "exec httpd -f -p 6379",
                extra=f'ports = ["{cache_port}:6379"]\n'
                      'healthcheck = { type = "tcp", port = 6379, interval = "1s" }\n')
            + busybox_service(
                "api", "mkdir -p /www && echo ok > /www/health && echo api-is-up && "
                       "exec httpd -f -p 8080 -h /www",
                depends_on='cache = "healthy"',
                extra=f'ports = ["{api_port}:8080"]\nhealthcheck = {{ type = "http", '
                      'port = 8080, path = "/health", interval = "1s" }\n'))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    docker = await require_docker()
    await docker.close()
    workdir = tmp_path_factory.mktemp("examples")
    name = stack_name()
    config = workdir / "stack.toml"
    config.write_text(config_text(name, stack_services(free_port(), free_port())))
    try:
        async with running_daemon(
                "env-manager", workdir,
                args=["--config", str(config), "--state-dir", str(workdir / "em-state")]
        ) as env_manager, running_daemon(
                "orchestrator", workdir,
                args=["--env-managers", env_manager.grpc_addr,
                      "--data-dir", str(workdir / "orch-data")]) as orchestrator:
            yield Stack(env_manager.grpc_addr, orchestrator.grpc_addr, name)
    finally:
        await remove_stack_containers(name)


async def run_example(stack: Stack, script: str, *args: str,
                      timeout: float = RUN_TIMEOUT) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    env.update({"ORCHESTRATOR_GRPC_ADDR": stack.orchestrator,
                "ENV_MANAGER_GRPC_ADDR": stack.env_manager})
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path("examples") / script), *args, cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"{script} {' '.join(args)} ran over {timeout} s:\n"
                             f"{out.decode()}{err.decode()}") from None
    return Run(process.returncode or 0, out.decode(), err.decode(), time.monotonic() - began)


async def test_every_example_has_a_test() -> None:
    tested = {"run_task.py", "fan_out.py", "workflow_diamond.py", "watch_events.py",
              "services.py", "sync_usage.py", "demo_workload.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


async def test_run_task(stack: Stack) -> None:
    run = await run_example(stack, "run_task.py")
    assert run.code == 0, str(run)
    assert re.search(r"^task task-[0-9a-f]{32}: completed after \d+ ms", run.out, re.M), str(run)
    assert "hello from a task container" in run.out, str(run)
    # The exit status follows the task's; stdout and stderr are both shown.
    failing = await run_example(stack, "run_task.py", "--", "sh", "-c",
                                "echo to-out; echo to-err >&2; exit 3")
    assert failing.code == 3, str(failing)
    assert ": failed after" in failing.out and "to-out" in failing.out, str(failing)
    assert "to-err" in failing.err and "error: exit code 3" in failing.err, str(failing)


async def test_fan_out(stack: Stack) -> None:
    run = await run_example(stack, "fan_out.py", "--count", "6")
    assert run.code == 0, str(run)
    assert "submitted 6 tasks" in run.out, str(run)
    assert len(re.findall(r"^\s+\d+/6 fan-\S+ completed$", run.out, re.M)) == 6, str(run)
    assert "6/6 correct" in run.out and "sum of squares = 55" in run.out, str(run)


async def test_workflow_diamond(stack: Stack) -> None:
    workflow = f"diamond-{uuid.uuid4().hex[:8]}"
    run = await run_example(stack, "workflow_diamond.py", "--workflow-id", workflow,
                            "--text", 'four "quoted" words here')
    assert run.code == 0, str(run)
    assert f"workflow {workflow} version 1" in run.out, str(run)
    run_id = re.search(r"^run (run-[0-9a-f]{32}) started$", run.out, re.M)
    assert run_id, str(run)
    assert "completed 4/4 steps" in run.out, str(run)
    assert (f'report: 4 words: FOUR "QUOTED" WORDS HERE ({run_id.group(1)})'
            in run.out.splitlines()), str(run)
    # The same spec again keeps its version.
    again = await run_example(stack, "workflow_diamond.py", "--workflow-id", workflow)
    assert again.code == 0 and f"workflow {workflow} version 1" in again.out, str(again)


async def test_watch_events(stack: Stack) -> None:
    # Something to see: a task of our own, then its events replayed from a minute back.
    assert (await run_example(stack, "run_task.py", "--", "true")).code == 0
    run = await run_example(stack, "watch_events.py", "--minutes", "1", "--max", "3")
    assert run.code == 0, str(run)
    lines = run.out.splitlines()
    assert len(lines) == 3, str(run)
    seqs = [int(re.search(r"#\s*(\d+) ", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert seqs == list(range(seqs[0], seqs[0] + 3)), str(run)
    assert run.err.strip() == "3 events", str(run)
    # A filter and a time limit: it ends by itself (no matching event needs to come).
    timed = await run_example(stack, "watch_events.py", "--minutes", "1", "--seconds", "3",
                              "--type", "task_completed")
    assert timed.code == 0, str(timed)
    assert timed.out and all(" task_completed " in line for line in timed.out.splitlines()), \
        str(timed)
    assert 3 <= timed.seconds < 60, str(timed)


async def test_services(stack: Stack) -> None:
    run = await run_example(stack, "services.py", "api", "--tail", "3")
    assert run.code == 0, str(run)
    # api depends on cache: both come up, in that order, and are reported healthy.
    assert re.search(r"\] cache +healthy .*\n(.*\n)*.*\] api +healthy ", run.out), str(run)
    assert re.search(r"^api +running +\d+ ", run.out, re.M), str(run)
    assert re.search(r"^cache +running +\d+ ", run.out, re.M), str(run)
    assert "--- api (last 3 log lines)\nstdout: api-is-up" in run.out, str(run)
    assert "stopped: api (stopped), cache (stopped)" in run.out, str(run)
    async with EnvManagerClient(stack.env_manager) as env:
        states = {name: s.status for name, s in (await env.get_services_status()).items()}
    assert states == {"api": "stopped", "cache": "stopped"}

    # Services that were already running are left alone; --keep leaves the rest up too.
    kept = await run_example(stack, "services.py", "--keep", "cache")
    assert kept.code == 0 and "left running: cache" in kept.out, str(kept)
    again = await run_example(stack, "services.py", "api")
    assert again.code == 0, str(again)
    assert "stopped: api (stopped)" in again.out and "cache (stopped)" not in again.out, \
        str(again)
    async with EnvManagerClient(stack.env_manager) as env:
        states = {name: s.status for name, s in (await env.get_services_status()).items()}
        assert states == {"api": "stopped", "cache": "running"}
        assert (await env.stop_services()).success


async def test_sync_usage(stack: Stack) -> None:
    run = await run_example(stack, "sync_usage.py")
    assert run.code == 0, str(run)
    assert "healthy: True" in run.out, str(run)
    assert f"env-manager {stack.env_manager}: SERVING" in run.out, str(run)
    assert "echo one: completed, stdout 'one\\n'" in run.out, str(run)
    assert "echo two: completed, stdout 'two\\n'" in run.out, str(run)
