"""The fast channel to a sandbox's command loop (loop.py): SandboxExec without an engine exec.

env-manager keeps the container's stdin and its stdout/stderr attached (docker/attach.py). One
reader task reads the output for the sandbox's whole life and hands it to the command running
(dropping what comes between commands: a background process's writes). One command at a time
(`busy`): an exec that finds the channel busy, broken or absent, or a request the loop cannot
frame (loop.fits), goes the engine's exec way (execs.py), so concurrent execs always run.

Timeout, or the caller gone mid-run: the command and what it started are killed as on the exec
way (execs.kill: every process holding the exec's marker in its environment); the loop survives
and writes the end markers. The channel is busy until then. When the end never comes (the kill
failed, the loop or the attach died), the channel is `broken` for good and the sandbox's execs
take the exec way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, Mapping, Sequence

from agent_infra.runtime.errors import FailedPrecondition, Unavailable
from agent_infra.runtime.logs import get_logger

from ..docker.attach import STREAM_ERRORS, Attachment
from ..docker.engine import DockerEngine
from . import execs, loop
from .execs import CHUNK_BYTES, KILL_TIMEOUT, MARKER_ENV, Chunk, Exit

log = get_logger("sandboxes")

_QUEUE = 32
_WRITE_ERRORS: tuple[type[Exception], ...] = (*STREAM_ERRORS, RuntimeError)
_background: set[asyncio.Task[None]] = set()


class _Run:
    """One command's output as the reader hands it over, and its end."""

    def __init__(self, secret: str, output_limit: int) -> None:
        self.scanners = {"stdout": loop.EndScanner(secret), "stderr": loop.EndScanner(secret)}
        self.limits = execs._Limits(output_limit)
        self.queue: asyncio.Queue[Chunk | int | None] = asyncio.Queue(_QUEUE)
        self.abandoned = False

    @property
    def done(self) -> bool:
        return all(scanner.done for scanner in self.scanners.values())

    async def feed(self, stream: str, data: bytes) -> None:
        scanner = self.scanners[stream]
        data = self.limits.cut(stream, scanner.feed(data))
        for start in range(0, len(data), CHUNK_BYTES):
            await self._put(Chunk(stream, data[start:start + CHUNK_BYTES]))
        if self.done:
            code = self.scanners["stdout"].code
            await self._put(code if code is not None else -1)

    async def _put(self, item: Chunk | int | None) -> None:
        if not self.abandoned:
            await self.queue.put(item)

    def abandon(self) -> None:
        self.abandoned = True
        while not self.queue.empty():  # unblocks a reader waiting to put
            self.queue.get_nowait()


class FastChannel:
    def __init__(self, container_id: str, output: Attachment, inlet: Attachment,
                 secret: str) -> None:
        """`output`/`inlet`: the loop's open attachments; `secret`: already sent to it."""
        self.container_id = container_id
        self._output = output
        self._inlet = inlet
        self._secret = secret
        self.busy = False
        self.broken = False
        self._current: _Run | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @staticmethod
    def new_secret() -> str:
        return f"agent-infra-end-{secrets.token_hex(16)}"

    def refusal(self, argv: Sequence[str], env: Mapping[str, str], workdir: str,
                stdin: bytes | None) -> str | None:
        """None when this channel runs the command now; else why not (the exec way)."""
        if self.broken:
            return "fast channel broken"
        if self.busy:
            return "fast channel busy (another exec runs)"
        return loop.fits(argv, {**env, MARKER_ENV: "x"}, workdir, stdin)

    async def close(self) -> None:
        self.broken = True
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        current, self._current = self._current, None
        if current is not None and not current.abandoned:
            current.abandon()  # what it held is dropped: the command's end is all that counts
            current.queue.put_nowait(None)
        for attachment in (self._inlet, self._output):
            with contextlib.suppress(Exception):
                await attachment.close()

    async def _read(self) -> None:
        try:
            while (chunk := await self._output.read()) is not None:
                current = self._current
                if current is None:
                    continue  # between commands: a background process's output
                await current.feed(*chunk)
                if current.done:
                    self._current = None
                    self.busy = False
        except Exception as exc:  # the stream broke (or worse): the channel is done either way
            log.warning("sandbox_fast_channel_output_broken", error=str(exc))
        self.broken = True
        if self._current is not None and not self._current.abandoned:
            await self._current.queue.put(None)
        log.info("sandbox_fast_channel_closed", container_id=self.container_id[:12])

    async def run(self, engine: DockerEngine, argv: Sequence[str], *, env: Mapping[str, str],
                  workdir: str, stdin: bytes | None, timeout: float,
                  output_limit: int) -> AsyncGenerator[Chunk | Exit, None]:
        """As execs.run, through the loop; check refusal() first (None) and iterate at once."""
        began = time.perf_counter()
        marker = secrets.token_hex(16)
        current = _Run(self._secret, output_limit)
        self.busy = True
        self._current = current
        try:
            await self._inlet.write(loop.frame(argv, {**env, MARKER_ENV: marker}, workdir,
                                               stdin))
        except _WRITE_ERRORS as exc:
            self.broken = True
            raise Unavailable("the sandbox's command channel broke; try again") from exc
        except BaseException:
            # Cancelled mid-write: the loop may hold half a frame, or run the command unseen.
            self.broken = True
            self._kill_later(engine, marker)
            raise
        finished = killed = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        item = await current.queue.get()
                except TimeoutError:
                    if killed:  # no end after the kill: the channel cannot be trusted
                        self.broken = True
                        log.warning("sandbox_fast_channel_stuck",
                                    container_id=self.container_id[:12])
                        code = -1
                        break
                    killed = True
                    await execs.kill(engine, self.container_id, marker)
                    deadline = time.monotonic() + KILL_TIMEOUT
                    continue
                if item is None:  # the container stopped, or the sandbox is being deleted
                    raise FailedPrecondition("the sandbox's command loop went away mid-command")
                if isinstance(item, int):
                    code = item
                    break
                yield item
            finished = True
            yield Exit(code, killed, current.limits.truncated,
                       (time.perf_counter() - began) * 1000)
        finally:
            if not current.done:
                current.abandon()
            if not finished and not killed:
                # The caller went away mid-run: the command goes too; the channel stays busy
                # until the loop says it ended.
                self._kill_later(engine, marker)

    def _kill_later(self, engine: DockerEngine, marker: str) -> None:
        task = asyncio.get_running_loop().create_task(
            execs.kill(engine, self.container_id, marker))
        _background.add(task)
        task.add_done_callback(_background.discard)
