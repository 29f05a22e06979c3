"""Warm task containers (tasks/warm.py) in a real env-manager daemon on the real engine.

Each test runs its own daemon under its own stack name; whatever carries the stack's label is
removed afterwards, and the tests that promise a removal check it before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import pytest_asyncio
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from tests.daemon_support import DaemonProcess, eventually, start_daemon
from tests.docker_support import TEST_IMAGE
from tests.env_support import remove_stack_containers, stack_name

STACK = "org.agent-infra.stack"
KIND = "org.agent-infra.kind"
CLASS = "cpu_short"
WAIT_S = 60.0
HOSTILE = ["$(touch /tmp/pwned)", "`touch /tmp/pwned`", "; touch /tmp/pwned", "a\nb'c\"d",
           "'", "\\", "*", "$HOME", "", "-n", "é ☃"]


def config(stack: str, *, warm: int, concurrency: int = 4) -> str:
    return (f'[stack]\nname = "{stack}"\n[workload_classes.{CLASS}]\nimage = "{TEST_IMAGE}"\n'
            f'concurrency = {concurrency}\nwarm = {warm}\nmemory = "96m"\npids_limit = 64\n'
            'default_timeout = "30s"\nmax_timeout = "60s"\n')


@dataclass
class Env:
    tmp_path: Path
    docker: aiodocker.Docker
    stack: str
    config: Path
    daemon: DaemonProcess | None = None
    stub: Any = None

    async def start(self) -> None:
        self.daemon = await start_daemon("env-manager", self.tmp_path, args=[
            "--config", str(self.config), "--state-dir", str(self.tmp_path / "state")])
        self.stub = env_manager_pb2_grpc.EnvManagerServiceStub(self.daemon.channel())

    async def close_channels(self) -> None:
        assert self.daemon is not None
        for channel in self.daemon.channels:
            await channel.close()
        self.daemon.channels.clear()
        self.daemon.notify.close()

    async def containers(self, kind: str | None = None,
                         status: str | None = None) -> list[dict[str, Any]]:
        wanted = [f"{STACK}={self.stack}", *([f"{KIND}={kind}"] if kind else [])]
        filters: dict[str, list[str]] = {"label": wanted}
        if status:
            filters["status"] = [status]
        found = await self.docker.containers.list(all=True, filters=filters)
        return [container._container for container in found]

    async def warm_ids(self) -> set[str]:
        return {c["Id"] for c in await self.containers("warm", "running")}

    async def wait_warm(self, count: int, *, besides: frozenset[str] = frozenset()) -> set[str]:
        """Until `count` warm containers (other than `besides`) run and nothing else of the stack
        is there (every earlier task container removed); their ids."""
        async def filled() -> bool:
            listed = await self.containers()
            warm = {c["Id"] for c in listed if c["Labels"].get(KIND) == "warm"
                    and c["State"] == "running"} - besides
            return len(warm) == count and len(listed) == count + len(besides)
        await eventually(filled, f"{count} warm containers and nothing else", timeout=WAIT_S)
        return await self.warm_ids() - besides

    async def execute(self, command: list[str] | str, *, tid: str = "", timeout: int = 0,
                      **payload: str) -> pb.ExecuteTaskResponse:
        text = command if isinstance(command, str) else json.dumps(command)
        response: pb.ExecuteTaskResponse = await self.stub.ExecuteTask(pb.ExecuteTaskRequest(
            task_id=tid or f"w-{uuid.uuid4().hex[:12]}", workload_class=CLASS,
            payload={"command": text, **payload}, timeout_seconds=timeout), timeout=WAIT_S)
        return response

    async def started_in(self, warm: set[str]) -> str:
        """Which of `warm` has printed "started" (the task handed to it has begun)."""
        async def which() -> str | None:
            for cid in warm:
                with contextlib.suppress(aiodocker.DockerError):  # removed meanwhile
                    logs = await self.docker.containers.container(cid).log(stdout=True)
                    if "started\n" in "".join(logs):
                        return cid
            return None

        async def found() -> bool:
            return await which() is not None

        await eventually(found, "a task to start in a warm container", timeout=WAIT_S)
        cid = await which()
        assert cid is not None
        return cid

    def reconfigure(self, warm: int) -> None:
        assert self.daemon is not None
        self.config.write_text(config(self.stack, warm=warm))
        self.daemon.signal(signal.SIGHUP)


@pytest_asyncio.fixture
async def env(tmp_path: Path, docker: aiodocker.Docker) -> AsyncIterator[Env]:
    stack = stack_name()
    path = tmp_path / "env-manager.toml"
    path.write_text(config(stack, warm=2))
    found = Env(tmp_path, docker, stack, path)
    try:
        await found.start()
        yield found
    finally:
        if found.daemon is not None and found.daemon.process.returncode is None:
            await found.close_channels()
            await found.daemon.stop()
        await remove_stack_containers(stack)


async def test_a_warm_container_runs_one_task_as_its_class_with_env_stdin_and_workdir(
        env: Env) -> None:
    warm = await env.wait_warm(2)
    info = await env.docker.containers.container(next(iter(warm))).show()
    host = info["HostConfig"]
    assert info["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 64 and host["Memory"] == 96 * 1024 * 1024
    assert host["NetworkMode"] == "none" and not host["Privileged"]

    env_values = {f"V{index}": word for index, word in enumerate(HOSTILE)}
    names = " ".join(f'"${name}"' for name in env_values)
    script = (f'id -u; id -g; printf "%s|" "$@"; echo; printf "%s|" {names}; echo; '
              'env | grep -c -e ^SHLVL= -e ^OLDPWD=; pwd; cat; ls /tmp')
    response = await env.execute(["sh", "-c", script, "sh", *HOSTILE],
                                 env=json.dumps(env_values), stdin="in\n$(id)\n",
                                 workdir="/tmp")
    result = dict(response.result)
    assert response.success, result
    assert result["container_id"] in warm  # a warm one served it
    words = "|".join(HOSTILE) + "|\n"
    # argv and env verbatim; nothing of the stub's shell in the env (the task's own sh sets
    # SHLVL=1 but no OLDPWD); its cwd, its stdin; and ls /tmp shows no pwned file.
    assert result["stdout"] == f"65534\n65534\n{words}{words}1\n/tmp\nin\n$(id)\n"
    assert result["stderr"] == ""

    # Timeouts and exit codes as cold; every task in a container of its own.
    timed = await env.execute(["sleep", "30"], timeout=1)
    assert not timed.success and timed.result["timed_out"] == "true"
    failed = await env.execute("echo out; echo err >&2; exit 3")
    assert failed.result["exit_code"] == "3" and failed.result["stdout"] == "out\n"
    assert failed.result["stderr"] == "err\n"
    refilled = await env.wait_warm(2)
    tid = f"w-{uuid.uuid4().hex[:12]}"
    call = asyncio.create_task(env.execute("echo started; exec sleep 30", tid=tid))
    running = await env.started_in(refilled)
    cancel = await env.stub.CancelTask(pb.CancelTaskRequest(task_id=tid), timeout=WAIT_S)
    assert cancel.success
    cancelled = await call
    assert not cancelled.success and cancelled.result["cancelled"] == "true"
    assert cancelled.result["container_id"] == running
    used = {result["container_id"], timed.result["container_id"],
            failed.result["container_id"], running}
    assert len(used) == 4
    refilled = await env.wait_warm(2)
    assert not refilled & used  # never handed a second task: removed, and fresh ones made


async def test_tasks_a_warm_container_cannot_serve_go_cold(env: Env) -> None:
    warm = await env.wait_warm(2)
    bad_name = await env.execute(["env"], env='{"A-B": "1"}')
    assert bad_name.success and "\nA-B=1\n" in bad_name.result["stdout"]
    limited = await env.stub.ExecuteTask(pb.ExecuteTaskRequest(
        task_id=f"w-{uuid.uuid4().hex[:12]}", workload_class=CLASS,
        payload={"execution": json.dumps({"command": ["true"],
                                          "resources": {"mem_bytes": 64 * 1024 * 1024}})}),
        timeout=WAIT_S)
    assert limited.success
    for response in (bad_name, limited):
        assert response.result["container_id"] not in warm
    assert await env.warm_ids() == warm  # neither took one
    # A workdir the image lacks: the warm stub cannot enter it, so the task runs cold, where
    # the engine makes it, as it always did.
    made = await env.execute(["pwd"], workdir="/made/for/it")
    assert made.success and made.result["stdout"] == "/made/for/it\n"
    assert made.result["container_id"] not in warm
    assert len(await env.warm_ids() & warm) == 1  # the one that could not serve it is gone


async def test_the_pool_refills_drains_on_sighup_and_leaves_nothing_at_shutdown(
        env: Env) -> None:
    first = await env.wait_warm(2)
    # One dies while it waits (the engine restarted it away, an operator killed it): it is
    # removed and replaced, never handed a task.
    dead = next(iter(first))
    await env.docker.containers.container(dead).kill()
    first = await env.wait_warm(2)
    assert dead not in first
    env.reconfigure(warm=0)
    await env.wait_warm(0)
    env.reconfigure(warm=1)
    again = await env.wait_warm(1)
    assert not again & first
    assert env.daemon is not None
    await env.close_channels()
    assert await env.daemon.stop() == 0
    assert await env.containers() == []


async def test_after_kill_9_unclaimed_warm_containers_go_and_a_claimed_one_is_adopted(
        env: Env) -> None:
    warm = await env.wait_warm(2)
    tid = f"w-{uuid.uuid4().hex[:12]}"
    command = "echo started; sleep 3; echo done"
    call = asyncio.create_task(env.execute(command, tid=tid))
    running = await env.started_in(warm)
    assert env.daemon is not None
    env.daemon.process.send_signal(signal.SIGKILL)
    await env.daemon.process.wait()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    await env.close_channels()

    await env.start()
    # The unclaimed warm containers (and any made after) are gone; the claimed one ran on.
    unclaimed = warm - {running}
    async def swept() -> bool:
        return not unclaimed & {c["Id"] for c in await env.containers()}
    await eventually(swept, "the unclaimed warm containers to be removed", timeout=WAIT_S)
    response = await env.execute(command, tid=tid)
    assert response.success, dict(response.result)
    assert response.result["container_id"] == running
    assert response.result["stdout"] == "started\ndone\n"  # ran once, followed to its end
    await env.wait_warm(2)

