"""Container logs with stdout and stderr told apart.

aiodocker's `container.log()` merges the two streams, so this reads the engine's multiplexed
stream itself: every frame starts with an 8-byte header whose first byte names the stream
(1 stdout, 2 stderr) and whose last four give the payload size. A container with a TTY has one
stream only, sent as plain text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Literal

import aiohttp

from .containers import docker_time, inspect
from .engine import DockerEngine

Stream = Literal["stdout", "stderr"]
_HEADER_SIZE = 8
_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}


@dataclass(frozen=True)
class LogLine:
    stream: Stream
    message: str
    timestamp: int  # unix seconds


async def container_logs(engine: DockerEngine, container_id: str, *, follow: bool, tail: int,
                         since: int) -> AsyncGenerator[LogLine, None]:
    """The container's log lines, oldest first: the last `tail` (0 = all) since `since`.

    With `follow` it keeps going until the container stops. Stopping iteration early (aclose,
    or cancelling the consumer) closes the HTTP response, which ends the engine's stream too.
    """
    info = await inspect(engine, container_id)
    tty = bool((info.get("Config") or {}).get("Tty"))
    params = {
        "stdout": "1", "stderr": "1", "timestamps": "1",
        "follow": "1" if follow else "0",
        "tail": str(tail) if tail > 0 else "all",
        "since": str(max(0, since)),
    }
    async with AsyncExitStack() as stack:
        response = await engine.call(
            f"logs of container {container_id}",
            lambda: stack.enter_async_context(engine.client._query(
                f"containers/{container_id}/logs", params=params,
                timeout=aiohttp.ClientTimeout())))
        # close, not release: a followed stream stopped midway must drop its connection, not
        # go back to the pool.
        stack.callback(response.close)
        frames = await stack.enter_async_context(aclosing(
            _plain_frames(response) if tty else _multiplexed_frames(response)))
        while True:
            try:
                stream, payload = await anext(frames)
            except StopAsyncIteration:
                return
            except (aiohttp.ClientError, OSError) as exc:
                raise engine.unavailable(exc) from None
            # Not splitlines(): a "\r" inside a message does not start a new log line.
            lines = payload.decode("utf-8", errors="replace").split("\n")
            if lines[-1] == "":
                lines.pop()
            for line in lines:
                # A TTY ends its lines with "\r\n".
                yield parse_line(stream, line.removesuffix("\r") if tty else line)


def follow_output(engine: DockerEngine, container_id: str, stream: Stream) -> AsyncIterator[str]:
    """One stream of the container's output as aiodocker's followed log gives it: text as it
    comes (no timestamps, not split into lines), until the container stops."""
    return engine.client.containers.container(container_id).log(follow=True, **{stream: True})


Frames = AsyncGenerator[tuple[Stream, bytes], None]


async def _multiplexed_frames(response: aiohttp.ClientResponse) -> Frames:
    while True:
        try:
            header = await response.content.readexactly(_HEADER_SIZE)
            payload = await response.content.readexactly(int.from_bytes(header[4:], "big"))
        except asyncio.IncompleteReadError:
            return  # end of the stream (a cut frame only happens when the engine goes away)
        # Anything else (0 stdin, 3 the engine's own error) reads best as stderr.
        yield _STREAMS.get(header[0], "stderr"), payload


async def _plain_frames(response: aiohttp.ClientResponse) -> Frames:
    while line := await response.content.readline():
        yield "stdout", line


def parse_line(stream: Stream, line: str) -> LogLine:
    """One "<RFC 3339 timestamp> <message>" line as the engine writes it with timestamps=1."""
    stamp, _, message = line.partition(" ")
    timestamp = docker_time(stamp)
    if not timestamp and not stamp[:4].isdigit():
        return LogLine(stream, line, 0)  # no timestamp after all: keep the text whole
    return LogLine(stream, message, timestamp)
