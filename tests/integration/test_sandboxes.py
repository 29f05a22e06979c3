"""Sandbox sessions at env-manager (issue 13): a real daemon, real containers of local/busybox.

Files and processes persist between execs and vanish with the sandbox; TTL and idle reaping;
another caller's token cannot use a sandbox; hostile PutFile/GetFile paths are refused; kill -9
of env-manager with a live sandbox, then a restart, re-adopts it (and reaps an expired one), as
docs/sandboxes.md says. Commands go through the sandbox's command loop (sandboxes/loop.py) in
busybox sh and dash, with hostile argv/env/stdin, and fall back to the exec API when it is busy
or after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import grpc
import pytest
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from tests.daemon_support import eventually, log_records, start_daemon
from tests.docker_support import (
    BUILD_IMAGE_SECONDS,
    DEBIAN_IMAGE,
    TEST_IMAGE,
    ensure_debian_image,
    require_docker,
)
from tests.env_support import remove_stack_containers, rpc_error, stack_name

pytestmark = pytest.mark.docker

OWNER = (("authorization", "Bearer owner-token"),)
OTHER = (("authorization", "Bearer another-token"),)
DASH_IMAGE = DEBIAN_IMAGE  # /bin/sh is dash


def config(stack: str) -> str:
    return (f'[stack]\nname = "{stack}"\n'
            f'[workload_classes.cpu_short]\nimage = "{TEST_IMAGE}"\nconcurrency = 2\n'
            'default_timeout = 30\n'
            '[workload_classes.cpu_short.sandbox]\nmax_sandboxes = 3\n'
            'default_ttl = 300\nmax_ttl = 600\n'
            'max_file_bytes = 65536\noutput_limit_bytes = 100000\n'
            # A class whose sandboxes take a warm container (tasks/warm.py) when one is ready.
            f'[workload_classes.cpu_warm]\nimage = "{TEST_IMAGE}"\nconcurrency = 2\nwarm = 1\n'
            'default_timeout = 30\n'
            '[workload_classes.cpu_warm.sandbox]\noutput_limit_bytes = 100000\n'
            # Warm, with a working directory its user cannot make (the archive API makes it).
            f'[workload_classes.cpu_warm_root]\nimage = "{TEST_IMAGE}"\nconcurrency = 1\n'
            'warm = 1\n[workload_classes.cpu_warm_root.sandbox]\nworkdir = "/sandbox"\n'
            # The command loop under dash.
            f'[workload_classes.dash]\nimage = "{DASH_IMAGE}"\nconcurrency = 1\n'
            'default_timeout = 30\n')


class Env:
    def __init__(self, tmp_path: Path, stack: str) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.config = tmp_path / f"{stack}.toml"
        self.config.write_text(config(stack))

    async def start(self) -> None:
        self.daemon = await start_daemon(
            "env-manager", self.tmp_path,
            args=["--config", str(self.config), "--state-dir", str(self.tmp_path / "state")])
        self.stub = env_manager_pb2_grpc.EnvManagerServiceStub(self.daemon.channel())

    async def create(self, metadata: tuple[tuple[str, str], ...] = OWNER,
                     workload_class: str = "cpu_short", **fields: object) -> str:
        if workload_class.startswith("cpu_warm"):
            await self.warm_ready(workload_class=workload_class)
        request = pb.CreateSandboxRequest(workload_class=workload_class, **fields)  # type: ignore[arg-type]
        before = len(self.created())
        answer = await self.stub.CreateSandbox(request, metadata=metadata, timeout=60)
        assert answer.sandbox.workload_class == workload_class
        assert answer.sandbox.expires_at > 0

        async def logged() -> bool:
            return len(self.created()) > before

        await eventually(logged, "the sandbox_created log line")
        assert self.created()[-1]["warm"] is workload_class.startswith("cpu_warm")
        return str(answer.sandbox_id)

    def fallbacks(self) -> list[dict[str, object]]:
        """The execs that went the exec API's way (not the command loop's), with the reason."""
        return [r for r in log_records(self.daemon.log_text())
                if r.get("event") == "sandbox_exec_fallback"]

    def created(self) -> list[dict[str, object]]:
        return [r for r in log_records(self.daemon.log_text())
                if r.get("event") == "sandbox_created"]

    async def warm_ready(self, count: int = 1, workload_class: str = "cpu_warm") -> None:
        """Until `count` warm containers of the class run (a sandbox's included)."""
        async def ready() -> bool:
            async with aiodocker.Docker() as docker:
                return len(await docker.containers.list(filters={"label": [
                    f"org.agent-infra.stack={self.stack}", "org.agent-infra.kind=warm",
                    f"org.agent-infra.workload-class={workload_class}"]})) >= count

        await eventually(ready, "a ready warm container of cpu_warm", timeout=60)

    async def run(self, sandbox_id: str, *command: str, stdin: bytes = b"",
                  timeout_seconds: int = 0, metadata: tuple[tuple[str, str], ...] = OWNER,
                  env: dict[str, str] | None = None,
                  ) -> tuple[pb.SandboxExecOutput, str, str]:
        call = self.stub.SandboxExec(pb.SandboxExecRequest(
            sandbox_id=sandbox_id, command=command, stdin=stdin, env=env or {},
            timeout_seconds=timeout_seconds), metadata=metadata, timeout=60)
        out, err, last = bytearray(), bytearray(), None
        async for item in call:
            if item.exited:
                last = item
            else:
                (out if item.stream == "stdout" else err).extend(item.data)
        assert last is not None
        return last, out.decode(), err.decode()

    async def sh(self, sandbox_id: str, line: str, **kw: object) -> tuple[int, str]:
        last, out, _ = await self.run(sandbox_id, "sh", "-c", line, **kw)  # type: ignore[arg-type]
        return last.exit_code, out

    async def listed(self, metadata: tuple[tuple[str, str], ...] = OWNER) -> set[str]:
        answer = await self.stub.ListSandboxes(pb.ListSandboxesRequest(), metadata=metadata,
                                               timeout=30)
        return {s.sandbox_id for s in answer.sandboxes}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    await (await require_docker()).close()
    found = Env(tmp_path, stack_name())
    await found.start()
    try:
        yield found
    finally:
        if found.daemon.process.returncode is None:
            await found.daemon.stop()
        found.daemon.notify.close()
        await remove_stack_containers(found.stack)


async def container_exists(stack: str, kind: str = "sandbox") -> int:
    async with aiodocker.Docker() as docker:
        return len(await docker.containers.list(
            all=True, filters={"label": [f"org.agent-infra.stack={stack}",
                                         f"org.agent-infra.kind={kind}"]}))


async def warm_containers(stack: str) -> set[str]:
    """Ids of cpu_warm's warm containers (ready, or a sandbox's)."""
    async with aiodocker.Docker() as docker:
        return {c.id for c in await docker.containers.list(all=True, filters={"label": [
            f"org.agent-infra.stack={stack}", "org.agent-infra.kind=warm",
            "org.agent-infra.workload-class=cpu_warm"]})}


@pytest.mark.parametrize("workload_class", ["cpu_short", "cpu_warm"])
async def test_files_and_processes_persist_then_vanish_on_delete(env: Env,
                                                                 workload_class: str) -> None:
    sid = await env.create(env={"GREETING": "hello"}, workload_class=workload_class)
    put = await env.stub.PutFile(pb.PutFileRequest(sandbox_id=sid, path="in/data.txt",
                                                   content=b"line\x00bin\n"), metadata=OWNER,
                                 timeout=30)
    assert put.path == "/tmp/sandbox/in/data.txt" and put.size_bytes == 9
    # The class's user, its working directory, the sandbox's env, stdin, both streams, exit code.
    last, out, err = await env.run(
        sid, "sh", "-c", 'id -u; pwd; echo "$GREETING $EXTRA"; cat; echo oops >&2; '
        'wc -c < in/data.txt; echo made > out.txt; sleep 300 >/dev/null 2>&1 </dev/null & exit 3',
        stdin=b"from stdin\n", env={"EXTRA": "there"})
    assert (last.exit_code, last.timed_out, last.truncated) == (3, False, False)
    assert out == "65534\n/tmp/sandbox\nhello there\nfrom stdin\n9\n" and err == "oops\n"
    # Files and processes are still there for the next command.
    code, out = await env.sh(sid, "cat out.txt; ps -o args | grep -c '^sleep 300'")
    assert (code, out) == (0, "made\n1\n")
    got = await env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="/tmp/sandbox/out.txt"),
                                 metadata=OWNER, timeout=30)
    assert got.content == b"made\n" and got.size_bytes == 5
    got = await env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="in/data.txt"),
                                 metadata=OWNER, timeout=30)
    assert got.content == b"line\x00bin\n"
    # Output over the limit is cut and said so; a command over its timeout is killed, with
    # what it started.
    last, out, _ = await env.run(sid, "sh", "-c", "head -c 300000 /dev/zero")
    assert last.truncated and len(out) == 100000 and last.exit_code == 0
    last, _, _ = await env.run(sid, "sh", "-c", "sleep 120 & sleep 121", timeout_seconds=1)
    assert last.timed_out
    code, out = await env.sh(sid, "ps -o args | grep -c '^sleep 12' || true")
    assert out == "0\n"
    assert await env.listed() == {sid}
    await env.stub.DeleteSandbox(pb.DeleteSandboxRequest(sandbox_id=sid), metadata=OWNER,
                                 timeout=60)
    assert await container_exists(env.stack) == 0
    if workload_class == "cpu_warm":  # the claimed warm container is gone, with its record
        assert not list((env.tmp_path / "state" / "sandboxes").glob("*.json"))
    error = await rpc_error(env.run(sid, "true"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await env.listed() == set()
    # A new sandbox starts empty.
    fresh = await env.create()
    assert await env.sh(fresh, "ls -A") == (0, "")


async def test_another_token_cannot_use_a_sandbox_and_bad_input_is_named(env: Env) -> None:
    sid = await env.create()
    for call in (env.run(sid, "true", metadata=OTHER), env.run(sid, "true", metadata=()),
                 env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="x"),
                                  metadata=OTHER, timeout=30),
                 env.stub.DeleteSandbox(pb.DeleteSandboxRequest(sandbox_id=sid),
                                        metadata=OTHER, timeout=30),
                 env.stub.DeleteSandbox(pb.DeleteSandboxRequest(sandbox_id=sid,
                                                                on_behalf_of="mallory"),
                                        metadata=OWNER, timeout=30)):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert await env.listed(OTHER) == set() and await env.listed() == {sid}
    bad: list[tuple[object, str]] = [
        (env.stub.CreateSandbox(pb.CreateSandboxRequest(workload_class="nope"), timeout=30),
         "workload_class"),
        (env.stub.CreateSandbox(pb.CreateSandboxRequest(workload_class="cpu_short",
                                                        ttl_seconds=100000), timeout=30),
         "ttl_seconds"),
        (env.stub.CreateSandbox(pb.CreateSandboxRequest(workload_class="cpu_short",
                                                        idle_timeout_seconds=-1), timeout=30),
         "idle_timeout_seconds"),
        (env.stub.CreateSandbox(pb.CreateSandboxRequest(workload_class="cpu_short",
                                                        image="evil:latest"), timeout=30),
         "image"),
        (env.stub.CreateSandbox(pb.CreateSandboxRequest(workload_class="cpu_short",
                                                        env={"A=B": "x"}), timeout=30), "env"),
        (env.run("short", "true"), "sandbox_id"),
        (env.run(sid), "command"),
        (env.run(sid, "true", timeout_seconds=-5), "timeout_seconds"),
        (env.stub.PutFile(pb.PutFileRequest(sandbox_id=sid, path="big", content=b"x" * 70000),
                          metadata=OWNER, timeout=30), "content"),
    ]
    for call, named in bad:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (named, error.details())
        assert named in (error.details() or ""), (named, error.details())
    error = await rpc_error(env.run("A" * 32, "true"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # The class's limit: 3 sandboxes.
    await env.create(metadata=OTHER)
    await env.create(metadata=OTHER)
    error = await rpc_error(env.create())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_sandboxes" in (error.details() or "")


async def test_hostile_paths_are_refused(env: Env) -> None:
    sid = await env.create()
    code, _ = await env.sh(sid, "ln -s /etc etc-link; ln -s /etc/passwd pw; "
                                "ln -s /tmp/sandbox/real.txt inside; echo ok > real.txt; "
                                "mkdir sub; ln -s .. sub/up")
    assert code == 0
    for path in ("../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "/tmp/sandbox", "",
                 "/tmp/sandbox/../etc/passwd", "x\x00y", "/tmp/sandboxed/x", "/tmp/x",
                 "etc-link/passwd", "pw", "sub/up/../etc/passwd",
                 "sub/up/etc-link/group"):
        for call in (env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path=path),
                                      metadata=OWNER, timeout=30),
                     env.stub.PutFile(pb.PutFileRequest(sandbox_id=sid, path=path,
                                                        content=b"pwned"),
                                      metadata=OWNER, timeout=30)):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error.details())
            assert "path" in (error.details() or "")
    # Nothing outside was written; a symlink that stays inside is read through.
    assert await env.sh(sid, "cat /etc/passwd | grep -c pwned || true") == (0, "0\n")
    got = await env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="inside"),
                                 metadata=OWNER, timeout=30)
    assert got.content == b"ok\n"
    error = await rpc_error(env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="nothing"),
                                             metadata=OWNER, timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await env.sh(sid, "head -c 70000 /dev/zero > big")
    error = await rpc_error(env.stub.GetFile(pb.GetFileRequest(sandbox_id=sid, path="big"),
                                             metadata=OWNER, timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_ttl_and_idle_sandboxes_are_reaped(env: Env) -> None:
    by_ttl = await env.create(ttl_seconds=2, idle_timeout_seconds=60)
    by_idle = await env.create(ttl_seconds=60, idle_timeout_seconds=1)
    kept = await env.create(ttl_seconds=60, idle_timeout_seconds=60,
                            workload_class="cpu_warm_root")
    assert await env.sh(kept, "pwd; stat -c %u .") == (0, "/sandbox\n65534\n")

    async def only_kept() -> bool:
        return await env.listed() == {kept} and await container_exists(env.stack) == 1

    await eventually(only_kept, "the TTL and idle sandboxes reaped", timeout=30)

    async def logged() -> bool:
        reaped = {r.get("reason") for r in log_records(env.daemon.log_text())
                  if r.get("event") == "sandbox_reaped"}
        return reaped == {"ttl", "idle"}

    await eventually(logged, "sandbox_reaped logged with reasons ttl and idle")
    for gone in (by_ttl, by_idle):
        assert (await rpc_error(env.run(gone, "true"))).code() == grpc.StatusCode.NOT_FOUND


async def test_kill_9_then_restart_readopts_live_sandboxes_and_reaps_expired(env: Env) -> None:
    live = await env.create(ttl_seconds=300)
    short = await env.create(ttl_seconds=2)
    warm = await env.create(ttl_seconds=300, workload_class="cpu_warm")
    await env.sh(live, "echo kept > state.txt")
    await env.sh(warm, "echo warm > state.txt")
    assert env.fallbacks() == []  # both through their command loops
    await env.warm_ready(2)  # the pool refilled: one unclaimed warm container to sweep
    warm_ids = await warm_containers(env.stack)
    assert len(warm_ids) == 2  # the sandbox's and the ready one
    env.daemon.process.kill()  # SIGKILL: no shutdown at all
    await env.daemon.wait_exit()
    env.daemon.notify.close()
    await asyncio.sleep(2.5)  # the short one's TTL passes while no env-manager runs
    await env.start()

    async def adopted() -> bool:
        return await env.listed() == {live, warm}

    await eventually(adopted, "the live sandboxes re-adopted", timeout=30)
    assert await env.sh(live, "cat state.txt") == (0, "kept\n")
    assert await env.sh(warm, "cat state.txt") == (0, "warm\n")
    # Their loops' attach went with the killed process: the exec API serves them now.
    async def fell_back() -> bool:
        return {r["reason"] for r in env.fallbacks()} == {
            "no fast channel (re-adopted, or its loop never started)"}

    await eventually(fell_back, "the re-adopted sandboxes' execs logged as fallbacks")

    async def loop_idle() -> bool:  # its stdin closed with the attach: it only waits and reaps
        return await env.sh(live, "ps -o args | grep -c '^sleep 86400' || true") == (0, "1\n")

    await eventually(loop_idle, "the loop of the re-adopted sandbox turned idle")

    async def swept() -> bool:  # the unclaimed one is gone, the sandbox's stays
        return len(await warm_containers(env.stack) & warm_ids) == 1

    await eventually(swept, "the unclaimed warm container removed")
    assert (await rpc_error(env.run(short, "true"))).code() == grpc.StatusCode.NOT_FOUND
    assert (await rpc_error(env.run(live, "true", metadata=OTHER))).code() == \
        grpc.StatusCode.NOT_FOUND
    assert await container_exists(env.stack) == 1
    env.daemon.signal(signal.SIGTERM)
    await env.daemon.wait_exit()
    # A graceful stop leaves sandboxes to the next process too (the claimed warm one included;
    # the pool removes only its unclaimed ones).
    assert await container_exists(env.stack) == 1
    assert len(await warm_containers(env.stack)) == 1


HOSTILE = ["a'b", '"q"', "$(id -u)", "`id -u`", "a\nb", "\\", "%s%n", " sp ", "", "-e", "*",
           "\u00e9\t\r", "'; exit 9; '", "${HOME}", "x\\'y"]


@pytest.mark.timeout(int(BUILD_IMAGE_SECONDS) + 300)  # may build DEBIAN_IMAGE first
@pytest.mark.parametrize("workload_class", ["cpu_short", "dash"])
async def test_commands_go_through_the_loop_with_hostile_values(env: Env,
                                                                workload_class: str) -> None:
    if workload_class == "dash":
        await ensure_debian_image()
    sid = await env.create(workload_class=workload_class)
    # Every argv word and env value arrives as given, nothing interpreted.
    last, out, err = await env.run(
        sid, "sh", "-c", 'printf "%s|" "$@"; printf "[%s]" "$V" "$W"', "name", *HOSTILE,
        env={"V": "\n".join(HOSTILE), "W": "$(touch /tmp/sandbox/pwned)"})
    assert (last.exit_code, err) == (0, "")
    assert out == "".join(f"{word}|" for word in HOSTILE) + \
        f"[{chr(10).join(HOSTILE)}][$(touch /tmp/sandbox/pwned)]"
    # Separate streams, the exit code, output without a final newline, binary stdin; output
    # that looks like the loop's end marker does not end the command.
    fake = "agent-infra-end-0123456789abcdef0123456789abcdef 0"
    last, out, err = await env.run(sid, "sh", "-c",
                                   'printf out; printf err >&2; printf "\\036%s\\n" "$1"; '
                                   'printf "%s\\n" "$1" >&2; echo after; exit 5', "sh", fake)
    assert (last.exit_code, out, err) == (5, f"out\x1e{fake}\nafter\n", f"err{fake}\n")
    data = bytes(range(256)) * 40 + b"\n'%\\\x00"
    last, out, _ = await env.run(sid, "sh", "-c", "md5sum | cut -c1-32; ls; exit 0",
                                 stdin=data)
    assert out == hashlib.md5(data).hexdigest() + "\n"  # and nothing was touched
    # The loop's secret is nowhere a command can simply read.
    _, out, _ = await env.run(sid, "sh", "-c", "cat /proc/1/cmdline /proc/1/environ "
                              "/proc/self/environ; ls -a /tmp /tmp/sandbox")
    assert "agent-infra-end-" not in out
    # A timeout kills the command (and what it started); the loop serves the next one.
    last, _, _ = await env.run(sid, "sh", "-c", "sleep 120 & sleep 121", timeout_seconds=1)
    assert last.timed_out
    assert await env.sh(sid, "echo next") == (0, "next\n")
    assert env.fallbacks() == []  # every command so far went through the loop
    # Two at once: both complete, one through the exec API.
    await env.sh(sid, "mkfifo /tmp/sandbox/go")
    slow = env.stub.SandboxExec(pb.SandboxExecRequest(
        sandbox_id=sid, command=["sh", "-c", "echo started; read x < /tmp/sandbox/go; echo a"]),
        metadata=OWNER, timeout=60)
    stream = slow.__aiter__()
    first = await stream.__anext__()
    assert (first.stream, first.data) == ("stdout", b"started\n")
    assert await env.sh(sid, "echo b; echo go > /tmp/sandbox/go") == (0, "b\n")
    rest = [item async for item in stream]
    assert b"".join(i.data for i in rest if not i.exited) == b"a\n"
    assert rest[-1].exited and rest[-1].exit_code == 0

    async def one_fallback() -> bool:  # (log lines may come a moment late)
        return [r["reason"] for r in env.fallbacks()] == ["fast channel busy (another exec runs)"]

    await eventually(one_fallback, "the second exec logged as a fallback")
    # A caller gone mid-command: the command is killed, the loop serves again.
    gone = env.stub.SandboxExec(pb.SandboxExecRequest(
        sandbox_id=sid, command=["sh", "-c", "echo x; sleep 120"]), metadata=OWNER, timeout=60)
    assert (await gone.__aiter__().__anext__()).data == b"x\n"
    gone.cancel()

    async def loop_serves() -> bool:
        before = len(env.fallbacks())
        return await env.sh(sid, "true") == (0, "") and len(env.fallbacks()) == before

    await eventually(loop_serves, "an exec through the loop again after a cancelled one")
