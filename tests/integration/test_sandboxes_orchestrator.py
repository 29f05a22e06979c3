"""Sandbox sessions through the orchestrator (issue 13): two real env-managers behind one
orchestrator, each sandbox's calls reaching the env-manager that holds it (also after the
orchestrator restarts); another token cannot reach a sandbox; `AgentInfra.sandbox()` and the
`agent-infra sandbox` CLI work end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import grpc
import pytest
from agent_infra.client import AgentInfra
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from tests.daemon_support import DaemonProcess, running_daemon, start_daemon
from tests.docker_support import require_docker
from tests.env_support import config_text, remove_stack_containers, rpc_error, stack_name
from tests.integration.test_cli import run_cli

pytestmark = pytest.mark.docker

ALICE = (("authorization", "Bearer alice"),)
BOB = (("authorization", "Bearer bob"),)


@dataclass
class Pair:
    env_managers: list[DaemonProcess]
    stacks: list[str]
    tmp_path: Path
    orchestrator: DaemonProcess

    async def restart_orchestrator(self) -> None:
        await self.orchestrator.stop()
        self.orchestrator.notify.close()
        self.orchestrator = await start_daemon(
            "orchestrator", self.tmp_path,
            args=["--env-managers", ",".join(d.grpc_addr for d in self.env_managers),
                  "--data-dir", str(self.tmp_path / "orch-data")])

    @property
    def stub(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self.orchestrator.channel())


@contextlib.asynccontextmanager
async def two_env_managers(tmp_path: Path) -> AsyncIterator[Pair]:
    await (await require_docker()).close()
    stacks = [stack_name(), stack_name()]
    try:
        async with contextlib.AsyncExitStack() as stack:
            daemons = []
            for name in stacks:
                config = tmp_path / f"{name}.toml"
                config.write_text(config_text(name, ""))
                daemons.append(await stack.enter_async_context(running_daemon(
                    "env-manager", tmp_path,
                    args=["--config", str(config), "--state-dir", str(tmp_path / name)])))
            orchestrator = await start_daemon(
                "orchestrator", tmp_path,
                args=["--env-managers", ",".join(d.grpc_addr for d in daemons),
                      "--data-dir", str(tmp_path / "orch-data")])
            pair = Pair(daemons, stacks, tmp_path, orchestrator)
            try:
                yield pair
            finally:
                await pair.orchestrator.stop()
                pair.orchestrator.notify.close()
    finally:
        for name in stacks:
            await remove_stack_containers(name)


async def sandbox_stacks(pair: Pair) -> dict[str, str]:
    """container name -> its stack, for every sandbox container of the pair's stacks."""
    async with aiodocker.Docker() as docker:
        found = await docker.containers.list(
            all=True, filters={"label": ["org.agent-infra.kind=sandbox"]})
        return {c["Names"][0]: c["Labels"]["org.agent-infra.stack"] for c in found
                if c["Labels"].get("org.agent-infra.stack") in pair.stacks}


async def run(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, sandbox_id: str,
              line: str, metadata: tuple[tuple[str, str], ...] = ALICE) -> tuple[int, str]:
    out, code = bytearray(), -1
    async for item in stub.SandboxExec(pb.SandboxExecRequest(
            sandbox_id=sandbox_id, command=["sh", "-c", line]), metadata=metadata, timeout=60):
        if item.exited:
            code = item.exit_code
        else:
            out.extend(item.data)
    return code, out.decode()


async def test_each_sandbox_is_routed_to_its_env_manager(tmp_path: Path) -> None:
    async with two_env_managers(tmp_path) as pair:
        stub = pair.stub
        ids = []
        for n in range(2):
            answer = await stub.CreateSandbox(pb.CreateSandboxRequest(
                task_class="cpu_short", env={"N": str(n)}), metadata=ALICE, timeout=60)
            assert answer.sandbox.task_class == "cpu_short"
            ids.append(answer.sandbox_id)
        # Round robin: one on each env-manager.
        assert sorted((await sandbox_stacks(pair)).values()) == sorted(pair.stacks)
        for n, sandbox_id in enumerate(ids):
            assert await run(stub, sandbox_id, 'echo "$N" > n.txt; cat n.txt') == (0, f"{n}\n")
        listed = await stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=ALICE, timeout=30)
        assert {s.sandbox_id for s in listed.sandboxes} == set(ids)
        # Another token: nothing listed, nothing reachable.
        listed = await stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=BOB, timeout=30)
        assert list(listed.sandboxes) == []
        for call in (run(stub, ids[0], "true", BOB),
                     stub.GetFile(pb.GetFileRequest(sandbox_id=ids[1], path="n.txt"),
                                  metadata=BOB, timeout=30),
                     stub.DeleteSandbox(pb.DeleteSandboxRequest(sandbox_id=ids[0]),
                                        metadata=BOB, timeout=30)):
            assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
        error = await rpc_error(stub.PutFile(pb.PutFileRequest(
            sandbox_id=ids[0], path="../x", content=b"x"), metadata=ALICE, timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "path" in error.details()
        # A restarted orchestrator knows no routes: it finds each sandbox again.
        await pair.restart_orchestrator()
        stub = pair.stub
        for n, sandbox_id in enumerate(ids):
            got = await stub.GetFile(pb.GetFileRequest(sandbox_id=sandbox_id, path="n.txt"),
                                     metadata=ALICE, timeout=30)
            assert got.content == f"{n}\n".encode() and got.path == "/tmp/sandbox/n.txt"
            await stub.DeleteSandbox(pb.DeleteSandboxRequest(sandbox_id=sandbox_id),
                                     metadata=ALICE, timeout=60)
        assert await sandbox_stacks(pair) == {}
        assert (await rpc_error(run(stub, ids[0], "true"))).code() == grpc.StatusCode.NOT_FOUND


async def test_client_context_manager_and_cli(tmp_path: Path) -> None:
    async with two_env_managers(tmp_path) as pair:
        address = pair.orchestrator.grpc_addr
        async with AgentInfra(orchestrator_address=address) as infra:
            async with infra.sandbox("cpu_short") as sb:
                r = await sb.run("echo out; echo err >&2; exit 4")
                assert (r.exit_code, r.stdout, r.stderr) == (4, "out\n", "err\n")
                assert await sb.put_file("a/b.txt", "hello") == "/tmp/sandbox/a/b.txt"
                assert (await sb.run(["cat", "a/b.txt"])).stdout == "hello"
                assert await sb.get_file("a/b.txt") == b"hello"
                r = await sb.run("cat", stdin="piped")
                assert r.stdout == "piped" and r.ok
            assert await sandbox_stacks(pair) == {}  # deleted when the block ended

        def cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
            done = run_cli("--orchestrator", address, "sandbox", *args, stdin=stdin)
            return done.code, done.out, done.err

        code, out, err = await asyncio.to_thread(cli, "create", "--ttl", "300", "--env",
                                                 "WHO=cli")
        assert code == 0, err
        sandbox_id = out.strip()
        code, out, err = await asyncio.to_thread(
            cli, "exec", sandbox_id, "--", "sh", "-c", 'echo "$WHO"; echo e >&2; exit 3')
        assert (code, out, err) == (3, "cli\n", "e\n")
        code, out, _ = await asyncio.to_thread(cli, "exec", sandbox_id, "--stdin", "--", "wc",
                                               "-c", stdin="12345")
        assert (code, out.strip()) == (0, "5")
        code, out, _ = await asyncio.to_thread(cli, "ls", "--json")
        assert code == 0 and [s["sandbox_id"] for s in json.loads(out)] == [sandbox_id]
        code, out, _ = await asyncio.to_thread(cli, "rm", sandbox_id)
        assert code == 0 and "deleted" in out
        code, _, err = await asyncio.to_thread(cli, "exec", sandbox_id, "--", "true")
        assert code == 1 and "NOT_FOUND" in err
        assert await sandbox_stacks(pair) == {}
