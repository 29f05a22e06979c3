"""The connection to the Docker engine: retries with backoff, and errors in domain terms.

Every Docker API call goes through `DockerEngine.call`, so transient failures (engine restarting,
5xx answers) are retried with exponential backoff and jitter, and what remains becomes a domain
error: Unavailable (naming the engine address), NotFound, FailedPrecondition or InvalidArgument.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiodocker
import aiohttp
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from agent_infra.runtime.logs import get_logger

from ..settings import RetrySettings

T = TypeVar("T")
log = get_logger("docker")

UNIX_SCHEME = "unix://"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# aiodocker reports a failed connection as a DockerError with this pseudo-status.
CONNECTION_FAILED = 900


class DockerEngine:
    def __init__(self, host: str | None, retry: RetrySettings) -> None:
        self.address = host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        self.retry = retry
        self._client: aiodocker.Docker | None = None
        self._connector: aiohttp.UnixConnector | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            # aiodocker connects lazily: making the client never touches the engine.
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> aiodocker.Docker:
        if not self.address.startswith(UNIX_SCHEME):
            return aiodocker.Docker(url=self.address)
        # Each running task holds two or three connections (attach, wait): aiohttp's default
        # pool of 100 would make every other call queue behind ~40 tasks.
        self._connector = aiohttp.UnixConnector(self.address[len(UNIX_SCHEME):], limit=0)
        client = aiodocker.Docker(url=self.address, connector=self._connector)
        # aiodocker only sets this placeholder host itself when it makes the connector.
        client.docker_host = UNIX_SCHEME + "localhost"
        return client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._connector is not None:
            await self._connector.close()
            self._connector = None

    async def ping(self, timeout: float = 5.0) -> None:
        """Raises Unavailable when the engine does not answer within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self.client.version()
        except (TimeoutError, aiohttp.ClientError, OSError, aiodocker.DockerError) as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> Unavailable:
        detail = str(exc) or type(exc).__name__
        return Unavailable(f"Docker engine unreachable at {self.address}: {detail}")

    async def call(self, what: str, operation: Callable[[], Awaitable[T]],
                   attempts: int | None = None) -> T:
        """Run one API operation, retrying transient failures; `what` names it in errors."""
        tries = attempts or self.retry.attempts
        delay = self.retry.initial
        for attempt in range(1, tries + 1):
            try:
                return await operation()
            except aiodocker.DockerError as exc:
                if exc.status == CONNECTION_FAILED:
                    if attempt == tries:
                        raise self.unavailable(exc) from None
                elif exc.status < 500 or attempt == tries:
                    raise _domain_error(what, exc) from None
                failure: BaseException = exc
            except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
                if attempt == tries:
                    raise self.unavailable(exc) from None
                failure = exc
            log.warning("docker_retry", operation=what, attempt=attempt, error=str(failure),
                        delay_s=round(delay, 3))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.retry.max)
        raise AssertionError("unreachable")


def _domain_error(what: str, exc: aiodocker.DockerError) -> Exception:
    message = exc.message if isinstance(exc.message, str) else str(exc.message)
    text = f"{what}: {message}"
    if exc.status == 404:
        return NotFound(text)
    if exc.status == 409:
        return FailedPrecondition(text)
    if exc.status == 400:
        return InvalidArgument(text)
    return Unavailable(f"{what}: Docker engine error {exc.status}: {message}")
