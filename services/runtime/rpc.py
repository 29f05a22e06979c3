"""A chain of middlewares around every RPC a daemon serves.

grpc.aio interceptors only see the handler before it runs. Rewrapping the handler's behaviour lets a
middleware await the whole call, so it sees the real final status and duration, including for
streams. Response streams written as async generators are turned into `context.write` loops first,
so every middleware wraps one awaitable, whatever the RPC's shape.

Responses are serialized inside the chain, not by grpc after it: a response over the size limit
then ends the call with RESOURCE_EXHAUSTED where every middleware sees it (grpc would refuse to
send it after the handler returned, and the call would be counted and logged as OK).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc

Invoke = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class RpcInfo:
    full_method: str
    service: str
    method: str
    # grpc-prometheus's grpc_type values
    kind: str

    @property
    def response_streaming(self) -> bool:
        return self.kind in ("SERVER_STREAM", "BIDI_STREAM")


class Middleware(Protocol):
    """Returns an awaitable of the RPC's result: usually it is a coroutine awaiting `invoke()`
    (the rest of the chain), but one with nothing to do after the call may return `invoke()`.

    A middleware with an `applies_to(info) -> bool` method is left out of the chain of the
    methods it returns False for: the chain is built once per method, not per call.
    """

    def __call__(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
    ) -> Awaitable[Any]: ...


_KINDS = {
    (False, False): "UNARY",
    (False, True): "SERVER_STREAM",
    (True, False): "CLIENT_STREAM",
    (True, True): "BIDI_STREAM",
}
_HANDLER_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    "UNARY": grpc.unary_unary_rpc_method_handler,
    "SERVER_STREAM": grpc.unary_stream_rpc_method_handler,
    "CLIENT_STREAM": grpc.stream_unary_rpc_method_handler,
    "BIDI_STREAM": grpc.stream_stream_rpc_method_handler,
}


class MiddlewareInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Runs `middlewares` (outermost first) around every handled RPC.

    grpc.aio asks the interceptor for a handler on every call. The wrapped handler of a method is
    built on its first call and reused: the registered handlers never change while serving, and
    rebuilding it per call cost more than the RPC's own work on a busy unary method.
    """

    def __init__(self, middlewares: Sequence[Middleware],
                 max_response_bytes: int | None = None) -> None:
        self._middlewares = tuple(middlewares)
        self._max_response_bytes = max_response_bytes
        # Only methods the server knows are cached: unknown names are not (they are unbounded).
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        full_method = handler_call_details.method
        wrapped = self._handlers.get(full_method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._handlers[full_method] = self._wrap(full_method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]
              ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = full_method.lstrip("/").partition("/")
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        info = RpcInfo(full_method, service, method, kind)
        behavior, response_serializer = _serializing(
            handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream,
            handler.response_serializer, info, self._max_response_bytes,
        )
        # Innermost first, so the loop below wraps outwards.
        layers = tuple(reversed([m for m in self._middlewares if _applies(m, info)]))

        async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if info.response_streaming:
                context = cast(grpc.aio.ServicerContext[Any, Any], WriteTrackingContext(context))
            invoke: Invoke = functools.partial(behavior, request, context)
            for middleware in layers:
                invoke = functools.partial(middleware, info, context, invoke)
            return await invoke()

        return _HANDLER_FACTORIES[kind](
            run,
            request_deserializer=handler.request_deserializer,
            response_serializer=response_serializer,
        )


def _applies(middleware: Middleware, info: RpcInfo) -> bool:
    applies_to = getattr(middleware, "applies_to", None)
    return applies_to is None or bool(applies_to(info))


Serializer = Callable[[Any], bytes]


def _serializing(
    behavior: Callable[..., Any], serializer: Serializer | None, info: RpcInfo,
    limit: int | None,
) -> tuple[Callable[..., Awaitable[Any]], Serializer | None]:
    """The handler as one awaitable that hands grpc serialized responses (and the serializer
    grpc is left with: None when the responses are bytes already).

    A response stream the handler writes itself (`context.write`) keeps grpc's serializer.
    """
    def encode(response: Any) -> bytes:
        data = serializer(response) if serializer is not None else response
        if limit is not None and len(data) > limit:
            raise _TooLarge(len(data), limit)
        return data

    if inspect.isasyncgenfunction(behavior):

        async def write_all(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async for response in behavior(request, context):
                try:
                    data = encode(response)
                except _TooLarge as exc:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                await context.write(data)

        return write_all, None
    if info.response_streaming:
        return _as_coroutine(behavior), serializer
    call = _as_coroutine(behavior)

    async def respond(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = await call(request, context)
        if response is None:
            return None  # grpc's own handling (the status set on the context)
        try:
            return encode(response)
        except _TooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    return respond, None


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"response of {size} bytes is larger than the server's limit of "
                         f"{limit} bytes (server.max_message_bytes)")


def _as_coroutine(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(behavior):
        return behavior

    async def call_sync(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return behavior(request, context)

    return call_sync


class WriteTrackingContext:
    """A response stream's context that can hold its writes and knows when none is in flight.

    grpc cannot finish a call while one of its sends is still in flight: a handler cancelled in the
    middle of `context.write` returns, grpc's send of the final status fails with
    GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, and the call is never ended (the client waits until the
    server's grace runs out). So whoever cancels a stream's handler first calls `hold_writes()`
    and awaits `until_no_write()`: the cancel then lands outside a send. Everything else is the
    real context's.
    """

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context
        self._no_write = asyncio.Event()  # set while no write is in flight
        self._no_write.set()
        self._held: asyncio.Future[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        if self._held is not None:
            await self._held  # never resolved: the handler waits here for its cancel
        self._no_write.clear()
        try:
            await self._context.write(message)
        finally:
            self._no_write.set()

    def hold_writes(self) -> None:
        """From now on a `write` waits (for the handler's cancel) instead of sending."""
        if self._held is None:
            self._held = asyncio.get_running_loop().create_future()

    async def until_no_write(self) -> None:
        """Once writes are held, no new one starts: the one in flight is the last to wait for."""
        await self._no_write.wait()


class StreamCloser:
    """Ends response streams when the daemon starts shutting down, with status OK.

    Long-lived streams (health Watch, log follow, event feeds) would otherwise hold shutdown for
    the whole grace period; unary calls are left to finish.
    """

    def __init__(self, closing: asyncio.Event) -> None:
        self._closing = closing

    @staticmethod
    def applies_to(info: RpcInfo) -> bool:
        return info.response_streaming

    async def __call__(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
    ) -> Any:
        if self._closing.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        call = asyncio.ensure_future(invoke())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait({call, closing}, return_when=asyncio.FIRST_COMPLETED)
            if call in done:
                return call.result()
            if isinstance(context, WriteTrackingContext):
                context.hold_writes()
                await context.until_no_write()
                if call.done():
                    return call.result()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            return None
        finally:
            closing.cancel()
            call.cancel()
