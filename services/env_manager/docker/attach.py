"""Attach streams: a container's stdout and stderr as it writes them, and its stdin.

Attached before the start, so not a byte of output is missed. Stdin has its own connection: the
engine ends an attach only once its stdin is at EOF, so output sharing one with stdin would wait
for all the stdin a process never read.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiodocker
import aiohttp
from aiodocker.stream import Stream as _AttachStream
from yarl import URL

from .engine import DockerEngine
from .logs import Stream

# What reading a broken or vanished stream raises (the engine went away, the container with it).
STREAM_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError,
                                              aiodocker.DockerError)
STDIN_CHUNK = 64 * 1024
_STDERR = 2


class Attachment:
    """One attach connection to a container: to its stdin alone, or to its stdout and stderr."""

    def __init__(self, engine: DockerEngine, container_id: str, *, stdin: bool) -> None:
        self._engine = engine
        self._container_id = container_id
        self._stdin = stdin
        # aiodocker's own attach() inspects the container first (a round trip per task) only to
        # learn whether it has a tty; ours never does. Empty detachKeys: stdin bytes are never
        # taken as a detach sequence.
        query: dict[str, str | int] = {"stream": 1, "stdout": int(not stdin),
                                       "stderr": int(not stdin), "stdin": int(stdin), "logs": 0,
                                       "detachKeys": ""}

        async def setup() -> tuple[URL, bytes | None, bool]:
            return URL(f"containers/{container_id}/attach").with_query(query), None, False

        self._stream = _AttachStream(engine.client, setup)

    async def open(self) -> None:
        await self._engine.call(f"attach to container {self._container_id}",
                                self._stream.__aenter__)

    async def read(self) -> tuple[Stream, bytes] | None:
        """The next chunk of output and the stream it came on; None at the end."""
        message = await self._stream.read_out()
        if message is None:
            return None
        return ("stderr" if message.stream == _STDERR else "stdout"), message.data

    async def send_stdin(self, data: bytes) -> None:
        """Writes `data`, then ends stdin; a process that exits without reading it all is fine."""
        try:
            # In chunks, so the transport never holds much more than the engine has taken.
            for start in range(0, len(data), STDIN_CHUNK):
                await self._stream.write_in(data[start:start + STDIN_CHUNK])
            self._close_stdin()
        except (aiohttp.ClientError, OSError, RuntimeError):
            pass  # the process exited without reading all of its stdin

    async def write(self, data: bytes) -> None:
        """Writes `data` and keeps stdin open (a command loop's next frame); raises what a
        broken stream raises (STREAM_ERRORS, RuntimeError)."""
        for start in range(0, len(data), STDIN_CHUNK):
            await self._stream.write_in(data[start:start + STDIN_CHUNK])

    async def close(self) -> None:
        if not self._stdin:
            await self._stream.close()
            return
        # Stdin the process never read would keep a graceful close waiting for ever.
        transport = self._transport()
        await self._stream.close()
        if transport is not None:
            transport.abort()

    def _close_stdin(self) -> None:
        # aiodocker's Stream.close() would drop the whole connection, output included; a
        # half-close is what the engine reads as the end of stdin.
        transport = self._transport()
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    def _transport(self) -> asyncio.Transport | None:
        response = self._stream._resp
        connection = response.connection if response is not None else None
        transport = connection.transport if connection is not None else None
        return transport if isinstance(transport, asyncio.Transport) else None
