"""One poller of the stack's status for every open Services page.

GetServicesStatus samples each container's stats, so it takes about 2 s; asked per page, ten
open tabs would ask env-manager ten times as often. `StatusFeed` polls once while any page
listens (each answer, then STATUS_INTERVAL s, then again), hands every listener the newest
snapshot (a listener that is behind gets the newest, never a backlog), and keeps the last one,
so a page renders at once from it instead of waiting for the next answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from agent_infra.runtime.logs import get_logger

from .services_stack import EndpointView, ServicesStack

log = get_logger("console")

STATUS_INTERVAL = 1.0
# A snapshot older than this is not shown as the current state (the page waits for the next).
FRESH_SECONDS = 30.0


class StatusFeed:
    def __init__(self, stack: Callable[[], ServicesStack]) -> None:
        self._stack = stack
        self._views: list[EndpointView] | None = None
        self._at = 0.0
        self._listeners: set[asyncio.Queue[list[EndpointView]]] = set()
        self._task: asyncio.Task[None] | None = None

    def latest(self) -> list[EndpointView] | None:
        """The last snapshot when it is fresh, else None."""
        if self._views is None or time.monotonic() - self._at > FRESH_SECONDS:
            return None
        return self._views

    def listen(self) -> asyncio.Queue[list[EndpointView]]:
        """A queue that always holds at most the newest snapshot (the last one at once)."""
        queue: asyncio.Queue[list[EndpointView]] = asyncio.Queue(maxsize=1)
        if (views := self.latest()) is not None:
            queue.put_nowait(views)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return queue

    async def leave(self, queue: asyncio.Queue[list[EndpointView]]) -> None:
        self._listeners.discard(queue)
        if not self._listeners and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while self._listeners:
            try:
                views = await self._stack().status()
            except Exception as exc:  # a closed client at shutdown, or a bug: say so, go on
                log.warning("console_services_status_failed", error=repr(exc)[:300])
                await asyncio.sleep(STATUS_INTERVAL)
                continue
            self._views, self._at = views, time.monotonic()
            for queue in list(self._listeners):
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # the older snapshot nobody read yet
                queue.put_nowait(views)
            await asyncio.sleep(STATUS_INTERVAL)
