"""One command in a running sandbox through the engine's exec API, its output streamed: the
way of the execs the command loop does not take (fast.py), and of PutFile/GetFile's scripts.

Output comes as chunks of at most CHUNK_BYTES, each stream capped at the class's
`sandbox.output_limit_bytes` (the rest is read and dropped, so the process never blocks on a full
pipe; the exit says `truncated`). The engine cannot kill an exec, so every exec carries a random
marker in its environment (AGENT_INFRA_EXEC) and at the timeout, or when the caller goes away, a
second exec kills every process of the sandbox whose environment has that marker: the command
and whatever it started (unless that cleared its environment on purpose: such a process lives on
in the sandbox, as a background process would, until the sandbox is deleted).

A background process that keeps the exec's stdout open would hold its stream open after the
command exits; the exec's state is polled (from POLL_FIRST s on, backing off) and once the
command has exited, output still coming is waited for only DRAIN_GRACE s.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from agent_infra.runtime.logs import get_logger

from ..docker import containers
from ..docker.attach import STREAM_ERRORS
from ..docker.engine import DockerEngine

log = get_logger("sandboxes")

CHUNK_BYTES = 64 * 1024
STDIN_CHUNK = 64 * 1024
MARKER_ENV = "AGENT_INFRA_EXEC"
POLL_FIRST = 0.25
POLL_MAX = 2.0
DRAIN_GRACE = 0.5
KILL_TIMEOUT = 10.0
_QUEUE = 32
# Kills every process whose environment holds AGENT_INFRA_EXEC=$1 (the marker is an argument,
# never part of the script).
KILL_SCRIPT = (
    'for d in /proc/[0-9]*; do '
    'if tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "AGENT_INFRA_EXEC=$1"; then '
    'kill -9 "${d#/proc/}" 2>/dev/null; fi; done; exit 0')

# Kill tasks started while a caller was being cancelled, kept until done.
_background: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Chunk:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True)
class Exit:
    exit_code: int
    timed_out: bool
    truncated: bool
    duration_ms: float


class _Limits:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = {"stdout": 0, "stderr": 0}
        self.truncated = False

    def cut(self, stream: str, data: bytes) -> bytes:
        room = max(0, self.limit - self.used[stream])
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        self.used[stream] += len(data)
        return data


async def run(engine: DockerEngine, container_id: str, command: Sequence[str], *,
              env: Mapping[str, str], workdir: str | None, user: str, stdin: bytes | None,
              timeout: float, output_limit: int) -> AsyncGenerator[Chunk | Exit, None]:
    """Chunks of output as they come, then one Exit. FailedPrecondition when the sandbox's
    container is not running; Unavailable when the engine is down."""
    began = time.perf_counter()
    marker = secrets.token_hex(16)
    container = engine.client.containers.container(container_id)
    environment = {**env, MARKER_ENV: marker}
    execution = await engine.call(
        f"exec in sandbox container {container_id[:12]}",
        lambda: container.exec(list(command), stdout=True, stderr=True,
                               stdin=stdin is not None, user=user, environment=environment,
                               workdir=workdir))
    stream = execution.start(detach=False)
    # One attempt: starting an exec twice would run the command twice.
    await engine.call(f"start exec in sandbox container {container_id[:12]}",
                      stream.__aenter__, attempts=1)
    limits = _Limits(output_limit)
    queue: asyncio.Queue[Chunk | None] = asyncio.Queue(_QUEUE)
    helpers = [asyncio.create_task(_pump(stream, queue, limits))]
    if stdin is not None:
        helpers.append(asyncio.create_task(_feed(stream, stdin)))
    finished = False
    timed_out = False
    try:
        deadline = time.monotonic() + timeout
        poll = POLL_FIRST
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is not None:
                wait = exited_at + DRAIN_GRACE - now
            else:
                wait = min(deadline - now, poll)
            try:
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    item = await queue.get()
            except TimeoutError:
                if exited_at is not None:
                    break  # exited; a background process holds the output open
                if time.monotonic() >= deadline:
                    timed_out = True
                    await kill(engine, container_id, marker)
                    exited_at = time.monotonic() + KILL_TIMEOUT - DRAIN_GRACE
                    continue
                poll = min(poll * 2, POLL_MAX)
                if not (await engine.call("inspect exec", execution.inspect)).get("Running"):
                    exited_at = time.monotonic()
                continue
            if item is None:
                break
            yield item
        code = await _exit_code(engine, execution)
        finished = True
        yield Exit(code, timed_out, limits.truncated, (time.perf_counter() - began) * 1000)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        with contextlib.suppress(*STREAM_ERRORS, RuntimeError):
            await stream.close()
        if not finished and not timed_out:
            # The caller went away (or the engine failed) mid-run: the command goes too.
            task = asyncio.get_running_loop().create_task(kill(engine, container_id, marker))
            _background.add(task)
            task.add_done_callback(_background.discard)


async def collect(engine: DockerEngine, container_id: str, command: Sequence[str], *,
                  user: str, stdin: bytes | None, timeout: float,
                  output_limit: int) -> tuple[Exit, bytes, bytes]:
    """run() gathered: (exit, stdout, stderr)."""
    out, err = bytearray(), bytearray()
    end: Exit | None = None
    async for item in run(engine, container_id, command, env={}, workdir=None, user=user,
                          stdin=stdin, timeout=timeout, output_limit=output_limit):
        if isinstance(item, Exit):
            end = item
        else:
            (out if item.stream == "stdout" else err).extend(item.data)
    assert end is not None
    return end, bytes(out), bytes(err)


async def kill(engine: DockerEngine, container_id: str, marker: str) -> None:
    """Kill every process of the exec with this marker (best effort; logged when it fails)."""
    try:
        await containers.exec_in(engine, container_id, ["/bin/sh", "-c", KILL_SCRIPT, "sh", marker],
                                 KILL_TIMEOUT)
    except Exception as exc:  # a sandbox deleted meanwhile, the engine gone: nothing to kill
        log.warning("sandbox_exec_kill_failed", container_id=container_id[:12], error=str(exc))


async def _pump(stream: Any, queue: asyncio.Queue[Chunk | None], limits: _Limits) -> None:
    try:
        while (message := await stream.read_out()) is not None:
            name = "stderr" if message.stream == 2 else "stdout"
            data = limits.cut(name, bytes(message.data))
            for start in range(0, len(data), CHUNK_BYTES):
                await queue.put(Chunk(name, data[start:start + CHUNK_BYTES]))
    except STREAM_ERRORS as exc:
        log.warning("sandbox_exec_output_broken", error=str(exc))
    await queue.put(None)


async def _feed(stream: Any, data: bytes) -> None:
    try:
        for start in range(0, len(data), STDIN_CHUNK):
            await stream.write_in(data[start:start + STDIN_CHUNK])
        response = stream._resp
        connection = response.connection if response is not None else None
        transport = connection.transport if connection is not None else None
        if isinstance(transport, asyncio.Transport) and transport.can_write_eof():
            transport.write_eof()  # the end of stdin; the output goes on
    except (aiohttp.ClientError, OSError, RuntimeError):
        pass  # the command exited without reading all of its stdin


async def _exit_code(engine: DockerEngine, execution: Any) -> int:
    # The output can end a moment before the engine records the exit: poll briefly.
    delay = 0.002
    for _ in range(40):
        info = await engine.call("inspect exec", execution.inspect)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return -1
