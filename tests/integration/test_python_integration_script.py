"""scripts/test_python_integration.py as users run it: a subprocess against a live stack.

A real env-manager (own stack name, free ports) and an orchestrator dispatching to it; the
script must pass every check and exit 0, with the addresses from options and from the
environment. Against addresses where nothing listens it must fail fast, exit 1 and say why.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest

from tests.daemon_support import REPO, free_port
from tests.infra_support import daemon_pair

SCRIPT = REPO / "scripts" / "test_python_integration.py"
CHECKS = ("orchestrator-health", "env-manager-health", "task", "workflow", "events")
# A developer's shell may point the client elsewhere; each run says what it wants.
_STRIPPED = ("ENV_MANAGER_", "ORCHESTRATOR_")


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (f"exit {self.code} after {self.seconds:.1f} s\n--- stdout\n{self.out}"
                f"--- stderr\n{self.err}")


async def run_script(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 250.0) -> Run:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED)}
    child_env.update(env or {})
    began = time.monotonic()
    # From another directory, the way a user runs it: the script finds the client itself.
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, cwd="/", env=child_env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"the script ran over {timeout} s:\n{out.decode()}"
                             f"{err.decode()}") from None
    return Run(process.returncode or 0, out.decode(), err.decode(), time.monotonic() - began)


def check_lines(out: str) -> dict[str, str]:
    """Check name -> its PASS/FAIL line."""
    lines = {}
    for line in out.splitlines():
        found = re.match(r"(PASS|FAIL) ([\w-]+)[ :]", line)
        if found:
            lines[found.group(2)] = line
    return lines


@pytest.mark.timeout(900)  # two runs, each bounded by its --timeout (task, workflow, events)
async def test_every_check_passes_against_a_live_stack(
        tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with daemon_pair(tmp_path) as pair:
        orchestrator, env_manager = pair.orchestrator.grpc_addr, pair.env_manager.grpc_addr
        by_option = await run_script("--orchestrator", orchestrator, "--env-manager",
                                     env_manager, "--timeout", "90")
        # The same stack again, addresses from the environment: nothing from the first run
        # (the workflow it created, its events) gets in the way.
        by_environment = await run_script(
            "--class", "cpu_short", "--timeout", "90",
            env={"ORCHESTRATOR_GRPC_ADDR": orchestrator, "ENV_MANAGER_GRPC_ADDR": env_manager})
    for run in (by_option, by_environment):
        assert run.code == 0, str(run)
        assert run.out.splitlines()[-1] == "5 passed, 0 failed", str(run)
        lines = check_lines(run.out)
        assert list(lines) == list(CHECKS), str(run)
        assert all(line.startswith("PASS ") for line in lines.values()), str(run)
        assert f"checking orchestrator {orchestrator}, env-manager {env_manager}" in run.out
    lines = check_lines(by_option.out)
    assert f"env-manager {env_manager} SERVING" in lines["orchestrator-health"]
    assert "completed 3/3 steps" in lines["workflow"]
    assert "consecutive" in lines["events"]


async def test_unreachable_stack_fails_fast_with_a_clear_reason() -> None:
    orchestrator, env_manager = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    run = await run_script("--orchestrator", orchestrator, "--env-manager", env_manager,
                           timeout=120)
    assert run.code == 1, str(run)
    # The connect timeout (5 s) for both daemons at once, plus interpreter start-up; the
    # checks that need the orchestrator are not attempted.
    assert run.seconds < 30, str(run)
    lines = check_lines(run.out)
    assert list(lines) == list(CHECKS), str(run)
    assert lines["orchestrator-health"].startswith(
        f"FAIL orchestrator-health: could not connect to orchestrator at {orchestrator} "
        f"within 5 s"), str(run)
    assert lines["env-manager-health"].startswith(
        f"FAIL env-manager-health: could not connect to env-manager at {env_manager}"), str(run)
    for name in ("task", "workflow", "events"):
        assert lines[name] == (f"FAIL {name}: not run: the orchestrator at {orchestrator} is "
                               f"unreachable"), str(run)
    assert run.out.splitlines()[-1] == "0 passed, 5 failed", str(run)
    assert "Traceback" not in run.err, str(run)
