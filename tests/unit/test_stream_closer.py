"""StreamCloser and WriteTrackingContext: a stream's handler is never cancelled inside a write.

grpc cannot send a call's final status while one of its sends is in flight
(GRPC_CALL_ERROR_TOO_MANY_OPERATIONS): a cancel landing inside `context.write` left the call
unfinished and the client waiting until the shutdown grace ran out. The write is simulated here
with a future the test completes, so the cancel's timing is exact.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
from agent_infra.runtime.rpc import RpcInfo, StreamCloser, WriteTrackingContext

STREAM = RpcInfo("/s.S/M", "s.S", "M", "SERVER_STREAM")


class FakeContext:
    """The part of a grpc context a stream uses: `write`, here held until `finish_write()`."""

    def __init__(self) -> None:
        self.writes: list[Any] = []
        self.in_flight: asyncio.Future[None] | None = None
        self.write_started = asyncio.Event()

    async def write(self, message: Any) -> None:
        self.in_flight = asyncio.get_running_loop().create_future()
        self.write_started.set()
        try:
            await self.in_flight
        except asyncio.CancelledError:
            raise AssertionError("a write was cancelled in flight") from None
        self.writes.append(message)

    def finish_write(self) -> None:
        assert self.in_flight is not None
        self.in_flight.set_result(None)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _tracking(fake: FakeContext) -> grpc.aio.ServicerContext[Any, Any]:
    return cast(grpc.aio.ServicerContext[Any, Any], WriteTrackingContext(
        cast(grpc.aio.ServicerContext[Any, Any], fake)))


async def test_closing_waits_for_the_write_in_flight_then_ends_the_stream() -> None:
    fake = FakeContext()
    context = _tracking(fake)
    handler_cancelled = asyncio.Event()

    async def endless() -> None:
        try:
            while True:
                await context.write(b"m")
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    closing = asyncio.Event()
    closer = asyncio.ensure_future(StreamCloser(closing)(STREAM, context, endless))
    await fake.write_started.wait()
    closing.set()
    for _ in range(5):  # the closer gets every chance to act; it must wait for the write
        await asyncio.sleep(0)
    assert not handler_cancelled.is_set() and not closer.done()

    fake.finish_write()
    assert await asyncio.wait_for(closer, 5) is None
    assert handler_cancelled.is_set()
    assert fake.writes == [b"m"], "the write in flight completes; no new one starts"


async def test_a_handler_idle_between_writes_is_ended_at_once() -> None:
    fake = FakeContext()
    context = _tracking(fake)
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waiting() -> None:
        await forever

    closing = asyncio.Event()
    closer = asyncio.ensure_future(StreamCloser(closing)(STREAM, context, waiting))
    await asyncio.sleep(0)
    closing.set()
    assert await asyncio.wait_for(closer, 5) is None
    assert forever.cancelled()


async def test_a_stream_that_ends_by_itself_keeps_its_result() -> None:
    context = _tracking(FakeContext())

    async def short() -> str:
        return "done"

    assert await StreamCloser(asyncio.Event())(STREAM, context, short) == "done"


def test_the_real_context_answers_everything_else() -> None:
    assert _tracking(FakeContext()).peer() == "ipv4:127.0.0.1:1"
