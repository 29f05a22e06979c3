"""What every domain client shares: lazy connection, deadlines, error mapping, stream iterators."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import grpc

from ._transport import ConnectionConfig, ServiceTarget, connect, resolve_address
from .errors import error_from_rpc

T = TypeVar("T")


class ServiceClient(abc.ABC):
    """Base of the typed clients: one channel to one daemon, opened on first use."""

    _target: ClassVar[ServiceTarget]

    def __init__(self, address: str | None = None, *,
                 config: ConnectionConfig | None = None) -> None:
        self._config = config or ConnectionConfig()
        # Resolved now, not at import: a process that sets the env variable late still wins.
        self._address = resolve_address(address, self._config, self._target)
        self._channel: Any = None
        self._stub: Any = None
        # The loop the channel belongs to: a grpc.aio channel cannot be used from another one.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting = asyncio.Lock()

    @property
    def address(self) -> str:
        """The address this client dials."""
        return self._address

    @property
    def config(self) -> ConnectionConfig:
        """The connection settings this client was made with."""
        return self._config

    async def connect(self) -> Self:
        """Connect now (calls connect on first use otherwise).

        Raises InfraUnavailable, naming the address, when no connection is ready within the
        config's connect_timeout.
        """
        await self._ready_stub()
        return self

    async def close(self) -> None:
        """Close the channel; calls still running end with Cancelled. Safe to call twice.

        A closed client connects again if it is used again.
        """
        channel, self._channel, self._stub = self._channel, None, None
        loop, self._loop = self._loop, None
        if channel is not None and loop is asyncio.get_running_loop():
            await channel.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @abc.abstractmethod
    def _make_stub(self, channel: Any) -> Any:
        """The generated stub of this client's service, on `channel`."""

    async def _ready_stub(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or used again from another event loop (asyncio.run twice): the old
            # channel belongs to a loop that is gone or elsewhere; it is dropped, never reused.
            self._channel, self._stub, self._loop = None, None, loop
            self._connecting = asyncio.Lock()
        if self._stub is not None:
            return self._stub
        async with self._connecting:
            if self._stub is None:
                self._channel = await connect(self._address, self._config, self._target)
                self._stub = self._make_stub(self._channel)
        return self._stub

    async def _unary(self, method: str, request: Any, timeout: float) -> Any:
        stub = await self._ready_stub()
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._address, self._target.method_path(method)) from exc

    async def _stream(self, method: str, request: Any, timeout: float | None,
                      convert: Callable[[Any], T]) -> AsyncIterator[T]:
        """Messages of a server stream, converted. Connects on the first iteration.

        The RPC is cancelled when the consumer stops early: on aclose(), and when the
        iterator is dropped (the event loop closes abandoned async generators).
        """
        stub = await self._ready_stub()
        call = getattr(stub, method)(request, timeout=timeout)
        try:
            async for message in call:
                yield convert(message)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._address, self._target.method_path(method)) from exc
        finally:
            call.cancel()


def names_tuple(names: str | Iterable[str]) -> tuple[str, ...]:
    """Service names as a tuple; a single string is one name, not a sequence of letters."""
    if isinstance(names, str):
        return (names,)
    return tuple(names)
