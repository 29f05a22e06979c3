"""env-manager's runtime plus one slow RPC, for shutdown tests (`python -m tests.slow_daemon`).

`/agent_infra.test.Slow/Sleep` takes the request bytes as a number of seconds, sleeps that long and
echoes them back. `.../Ticks` streams b"tick" every 50 ms until cancelled. `.../Flood` streams
messages of the request's number of bytes, as fast as the client reads them. `.../Noise` makes the
standard library log (asyncio's "Task exception was never retrieved", a warnings.warn) and echoes.
`.../Big` answers as many bytes as the request's number; `.../BigStream` streams b"ok", then that
many bytes, then b"ok" (responses over the message limit).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import grpc
from agent_infra.env_manager.app import EnvManagerApp
from agent_infra.env_manager.settings import SPEC
from agent_infra.runtime import run_daemon

SERVICE = "agent_infra.test.Slow"


async def _sleep(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return request


async def _ticks(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    while True:
        yield b"tick"
        await asyncio.sleep(0.05)


async def _flood(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    chunk = b"x" * int(request.decode())
    while True:
        yield chunk


async def _noise(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    async def fail() -> None:
        raise RuntimeError("provoked: nobody retrieves this")

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.wait({task})  # waits without retrieving the exception
    del task  # its last reference: asyncio logs the exception nobody retrieved
    gc.collect()
    warnings.warn("provoked: a warning", UserWarning, stacklevel=1)
    return request


async def _big(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"x" * int(request.decode())


async def _big_stream(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    yield b"ok"
    yield b"x" * int(request.decode())
    yield b"ok"


class SlowApp(EnvManagerApp):
    def register(self, server: grpc.aio.Server) -> None:
        super().register(server)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Ticks": grpc.unary_stream_rpc_method_handler(_ticks),
            "Flood": grpc.unary_stream_rpc_method_handler(_flood),
            "Noise": grpc.unary_unary_rpc_method_handler(_noise),
            "Big": grpc.unary_unary_rpc_method_handler(_big),
            "BigStream": grpc.unary_stream_rpc_method_handler(_big_stream),
        })])


if __name__ == "__main__":
    sys.exit(run_daemon(SPEC, SlowApp, sys.argv[1:]))
