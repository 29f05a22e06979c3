"""Sandbox sessions through the orchestrator: each routed to the env-manager that holds it.

CreateSandbox goes to the env-manager endpoints in turn (round robin), passing on to the next
when one has no room for the class (RESOURCE_EXHAUSTED) or does not answer. The endpoint that
made a sandbox is remembered by a digest of its id (at most ROUTE_LIMIT, least recently used
forgotten first); a sandbox not remembered (this orchestrator restarted, or forgot it) is found
by asking each endpoint's ListSandboxes for the caller's sandboxes.

Who may use a sandbox is decided by env-manager: the orchestrator calls it with its own
endpoint token and `on_behalf_of` = a hash of the caller's bearer token here ("" without one),
so through the orchestrator too only the creator's token reaches its sandbox; anyone else gets
NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence

from agent_infra.client.env_manager import EnvManagerClient
from agent_infra.client.errors import DeadlineExceeded as ClientDeadline
from agent_infra.client.errors import InfraError, InfraUnavailable
from agent_infra.client.errors import NotFound as ClientNotFound
from agent_infra.client.errors import ResourceExhausted as ClientExhausted
from agent_infra.client.sandbox import ExecChunk, ExecResult, SandboxInfo
from agent_infra.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agent_infra.runtime.logs import get_logger

from .executors.env_manager import env_manager_error

log = get_logger("sandboxes")

ROUTE_LIMIT = 65536
def caller_identity(token: str | None) -> str:
    """The caller as env-manager is told (on_behalf_of): a hash of its token, never the token."""
    if not token:
        return ""
    return hashlib.sha256(b"agent-infra orchestrator caller\0" + token.encode()).hexdigest()


class SandboxRouter:
    def __init__(self, clients: Sequence[EnvManagerClient]) -> None:
        self._clients = list(clients)
        self._turn = itertools.cycle(range(len(self._clients)))
        self._where: OrderedDict[str, int] = OrderedDict()

    async def create(self, task_class: str, image: str, env: Mapping[str, str],
                     ttl_seconds: int, idle_timeout_seconds: int, caller: str) -> SandboxInfo:
        if not self._clients:
            raise FailedPrecondition("no env-manager endpoint is configured")
        first = next(self._turn)
        last: InfraError | None = None
        for step in range(len(self._clients)):
            index = (first + step) % len(self._clients)
            try:
                created = await self._clients[index].create_sandbox(
                    task_class, image=image, env=env, ttl_seconds=ttl_seconds,
                    idle_timeout_seconds=idle_timeout_seconds, on_behalf_of=caller)
            except (ClientExhausted, InfraUnavailable, ClientDeadline) as exc:
                last = exc  # full, or not answering: the next endpoint may have room
                continue
            except InfraError as exc:
                raise env_manager_error(exc) from None
            self._remember(created.id, index)
            return created.info
        assert last is not None
        raise env_manager_error(last)

    async def exec(self, sandbox_id: str, caller: str, command: list[str], stdin: bytes,
                   env: Mapping[str, str], timeout_seconds: int,
                   workdir: str) -> AsyncIterator[ExecChunk | ExecResult]:
        client = await self._client_of(sandbox_id, caller)
        items = client.sandbox_exec(sandbox_id, command, stdin=stdin, env=env,
                                    timeout_seconds=timeout_seconds, workdir=workdir,
                                    on_behalf_of=caller)
        try:
            async for item in items:
                yield item
        except InfraError as exc:
            raise self._failed(sandbox_id, exc) from None
        finally:
            await items.aclose()  # type: ignore[attr-defined]

    async def put_file(self, sandbox_id: str, caller: str, path: str, content: bytes,
                       mode: int) -> str:
        client = await self._client_of(sandbox_id, caller)
        try:
            return await client.put_file(sandbox_id, path, content, mode=mode,
                                         on_behalf_of=caller)
        except InfraError as exc:
            raise self._failed(sandbox_id, exc) from None

    async def get_file(self, sandbox_id: str, caller: str, path: str) -> tuple[str, bytes]:
        client = await self._client_of(sandbox_id, caller)
        try:
            return await client.read_file(sandbox_id, path, on_behalf_of=caller)
        except InfraError as exc:
            raise self._failed(sandbox_id, exc) from None

    async def delete(self, sandbox_id: str, caller: str) -> None:
        client = await self._client_of(sandbox_id, caller)
        try:
            await client.delete_sandbox(sandbox_id, on_behalf_of=caller)
        except InfraError as exc:
            raise self._failed(sandbox_id, exc) from None
        self._where.pop(_key(sandbox_id), None)

    async def owned(self, caller: str, task_class: str = "") -> list[SandboxInfo]:
        """The caller's sandboxes on every endpoint that answers (one that does not is
        logged and left out)."""
        async def one(index: int) -> list[SandboxInfo]:
            client = self._clients[index]
            try:
                found = await client.list_sandboxes(task_class, on_behalf_of=caller)
            except (InfraUnavailable, ClientDeadline) as exc:
                log.warning("sandbox_list_partial", env_manager=client.address,
                            error=exc.details)
                return []
            except InfraError as exc:
                raise env_manager_error(exc) from None
            for info in found:
                self._remember(info.sandbox_id, index)
            return found

        answers = await asyncio.gather(*(one(i) for i in range(len(self._clients))))
        return sorted((info for found in answers for info in found),
                      key=lambda info: info.created_at)

    # -- routing -------------------------------------------------------------------------------

    def _remember(self, sandbox_id: str, index: int) -> None:
        key = _key(sandbox_id)
        self._where[key] = index
        self._where.move_to_end(key)
        while len(self._where) > ROUTE_LIMIT:
            self._where.popitem(last=False)

    async def _client_of(self, sandbox_id: str, caller: str) -> EnvManagerClient:
        if not sandbox_id:
            raise InvalidArgument("sandbox_id is required")
        index = self._where.get(_key(sandbox_id))
        if index is None:
            await self.owned(caller)  # finds it if the caller owns it anywhere
            index = self._where.get(_key(sandbox_id))
        if index is None:
            raise NotFound("sandbox_id: no such sandbox (unknown, deleted, expired, or not the "
                           "caller's)")
        self._where.move_to_end(_key(sandbox_id))
        return self._clients[index]

    def _failed(self, sandbox_id: str, exc: InfraError) -> DomainError:
        if isinstance(exc, ClientNotFound) and "sandbox_id" in exc.details:
            self._where.pop(_key(sandbox_id), None)
        return env_manager_error(exc)


def _key(sandbox_id: str) -> str:
    return hashlib.sha256(sandbox_id.encode()).hexdigest()
