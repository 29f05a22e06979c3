"""Services: the env-manager stack through the orchestrator's endpoints (services_stack.py).

GET  /console/services?endpoint=I&service=NAME  every endpoint's services: state, health,
                                                ports, CPU, memory; the log tail of one
GET  /console/services/live?endpoint=I&service=NAME
                                                server-sent events: `status` (every endpoint,
                                                sent at once and whenever it changes: see
                                                services_feed.py), `log_start`, `log`,
                                                `log_end` for the named service, `reconnect`
POST /console/services/{endpoint}/{name}/{start|stop|restart}
                                                JSON {"success", "message"}; errors JSON with
                                                the domain error's status (503: unavailable)

A tail starts with the last LOG_TAIL lines (`log_start` tells the page to clear what it had, so
a reconnect never shows a line twice) and follows the container; when the container stops,
`log_end` says why, and the tail starts again once the service has a new container. The stream
ends (`reconnect`) before the HTTP request time limit would cut it, or when the daemon stops;
the page reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from agent_infra.runtime.errors import DomainError, InvalidArgument, NotFound, shorten
from agent_infra.runtime.parsing import parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from ..events import Subscription
from .services_feed import StatusFeed
from .services_stack import EndpointView, ServicesStack, check_name
from .shell import PREFIX, Console, json_error

BASE = PREFIX + "/services"
LOG_TAIL = 100
# Messages held for a slow page; a log faster than the page reads waits (it is a followed
# gRPC stream: env-manager holds the rest).
QUEUE_SIZE = 200
KEEPALIVE = 15.0
RETRY_MS = 1000
WRITE_TIMEOUT = 10.0
TIME_LIMIT_MARGIN = 2.0
ACTIONS = ("start", "stop", "restart")


def routes(console: Console) -> list[web.RouteDef]:
    holder: list[ServicesStack] = []

    def stack() -> ServicesStack:
        if not holder:
            holder.append(ServicesStack.of(console.domain().executor))
        return holder[0]

    feed = StatusFeed(stack)

    async def page(request: web.Request) -> web.StreamResponse:
        try:
            endpoint, service = _selection(request, stack())
        except DomainError as exc:
            endpoint, service = 0, ""
            error = str(exc)
        else:
            error = ""
        # The shared feed's last snapshot (GetServicesStatus takes about 2 s); without one the
        # page shows each endpoint as "checking" and its live stream fills it in.
        endpoints = feed.latest() or [EndpointView(index, address, "checking", "", ())
                                      for index, address in enumerate(stack().addresses)]
        if not service and endpoint < len(endpoints) and endpoints[endpoint].services:
            service = endpoints[endpoint].services[0].name
        return console.render(request, "services.html", section="services", title="Services",
                              endpoints=endpoints, endpoint=endpoint, service=service,
                              error=error, actions=ACTIONS)

    async def live(request: web.Request) -> web.StreamResponse:
        try:
            endpoint, service = _selection(request, stack())
        except DomainError as exc:
            return json_error(http_status(exc), str(exc))
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        latest: dict[str, str] = {}  # service -> container id, from the last status
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        # The event hub's subscriptions end when the daemon stops: so does this stream.
        closing = console.domain().events.subscribe(["workflow_created"])
        jobs = [loop.create_task(_until_closed(closing, queue)),
                loop.create_task(_watch_status(feed, queue, endpoint, latest, changed))]
        if service:
            jobs.append(loop.create_task(
                _follow(stack(), queue, endpoint, service, latest, changed)))
        limit = console.domain().settings.server.http_request_timeout - TIME_LIMIT_MARGIN
        deadline = time.monotonic() + max(limit, 1.0)
        reason = "request time limit"
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    name, data = await asyncio.wait_for(queue.get(), min(KEEPALIVE, left))
                except TimeoutError:
                    await _write(response, b": keepalive\n\n")
                    continue
                if name == "end":
                    reason = data
                    break
                await _write(response, _message(name, data))
            await _write(response, _message("reconnect", {"reason": reason}))
        except (ConnectionResetError, TimeoutError):
            pass  # the page went away or stopped reading
        finally:
            for job in jobs:
                job.cancel()
            for job in jobs:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
            await closing.aclose()
        return response

    async def act(request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        try:
            index = _endpoint(request.match_info["endpoint"])
            name = request.match_info["name"]
            check_name(name)
            if action not in ACTIONS:
                raise NotFound(f"action '{shorten(action, 40)}' not found: use "
                               f"{', '.join(ACTIONS)}")
            result = await getattr(stack(), action)(index, name)
        except DomainError as exc:
            return json_error(http_status(exc), str(exc))
        return web.json_response({"success": result.success, "message": result.message},
                                 headers={"Cache-Control": "no-store"})

    return [
        web.get(BASE, console.page(page)),
        web.get(BASE + "/live", console.api(live)),
        web.post(BASE + "/{endpoint}/{name}/{action}", console.action(act)),
    ]


def _endpoint(text: str) -> int:
    try:
        return parse_int(text, "endpoint", 0, 1023)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _selection(request: web.Request, stack: ServicesStack) -> tuple[int, str]:
    index = _endpoint(request.query.get("endpoint", "0") or "0")
    if stack.addresses:
        stack.client(index)  # NotFound for an endpoint the orchestrator does not have
    service = request.query.get("service", "")
    if service:
        check_name(service)
    return index, service


def endpoint_json(view: EndpointView) -> dict[str, Any]:
    return {"index": view.index, "address": view.address, "state": view.state,
            "error": view.error, "services": [{
                "name": s.name, "state": s.state, "health": s.health,
                "health_detail": s.health_detail, "ports": list(s.ports),
                "cpu_percent": s.cpu_percent, "memory_bytes": s.memory_bytes,
                "container_id": s.container_id, "started_at": s.started_at}
                for s in view.services]}


async def _until_closed(subscription: Subscription, queue: asyncio.Queue[tuple[str, Any]]
                        ) -> None:
    async for _ in subscription:
        pass
    await queue.put(("end", "the daemon is stopping"))


async def _watch_status(feed: StatusFeed, queue: asyncio.Queue[tuple[str, Any]],
                        endpoint: int, latest: dict[str, str], changed: asyncio.Event) -> None:
    """Every endpoint's status now, then whenever it changes (CPU and memory included)."""
    last: Any = None
    snapshots = feed.listen()
    try:
        while True:
            views = await snapshots.get()
            snapshot = [endpoint_json(view) for view in views]
            if snapshot != last:
                last = snapshot
                await queue.put(("status", {"endpoints": snapshot}))
            if endpoint < len(views):
                current = {s.name: s.container_id if s.state != "stopped" else ""
                           for s in views[endpoint].services}
                if current != latest:
                    latest.clear()
                    latest.update(current)
                    changed.set()
    finally:
        await feed.leave(snapshots)


async def _follow(stack: ServicesStack, queue: asyncio.Queue[tuple[str, Any]], endpoint: int,
                  service: str, latest: dict[str, str], changed: asyncio.Event) -> None:
    """The service's log: a tail, then each line, again for each new container."""
    followed: str | None = None
    while True:
        if followed is not None:
            # Wait for a container other than the one whose log ended.
            while latest.get(service, "") in ("", followed):
                changed.clear()
                await changed.wait()
        followed = latest.get(service, "")
        await queue.put(("log_start", {"service": service, "container_id": followed}))
        reason = "the container stopped"
        try:
            async for line in stack.follow_logs(endpoint, service, tail=LOG_TAIL):
                await queue.put(("log", {"stream": line.stream, "message": line.message,
                                         "ts": line.timestamp}))
        except DomainError as exc:
            reason = shorten(str(exc), 300)
        await queue.put(("log_end", {"service": service, "reason": reason}))
        if not followed:
            # No container was known when it started: wait for the status to name one.
            followed = "-"


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(data)


def _message(name: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data))
