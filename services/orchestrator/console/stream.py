"""GET /console/stream: the orchestrator's events as server-sent events (text/event-stream).

The same events, with the same sequence numbers, as the StreamEvents RPC (they come from the one
EventHub), so a page that reconnects misses nothing:

* query `types=a,b` (default: every type; an unknown name is a 400 naming it),
  `since=UNIX_SECONDS` (stored events with ts >= since first, then live; 0 or absent: live only),
  `last_event_id=SEQ` or the `Last-Event-ID` header the browser resends by itself when it
  reconnects: every stored event after SEQ, then live (it wins over `since`).
* each message is `id: SEQ`, `event: TYPE`, `data: {"seq", "type", "resource_id", "data", "ts"}`
  where TYPE is one of the event types (events.EVENT_TYPES):
  task_submitted, task_started, task_retrying, task_completed, task_failed, task_cancelled,
  workflow_created, workflow_started, workflow_step_started, workflow_step_completed,
  workflow_step_failed, workflow_step_skipped, workflow_completed, workflow_failed.
* `event: reconnect`, data `{"last_event_id": SEQ, "reason": ...}`: the server ends the stream
  (the subscriber fell QUEUE_SIZE events behind, the request time limit is near, or the daemon
  stops). The browser's EventSource reconnects after `retry` (1 s) with Last-Event-ID, and the
  replay fills the gap.
* a `: keepalive` comment every KEEPALIVE seconds of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
from agent_infra.runtime.errors import DomainError, InvalidArgument
from agent_infra.runtime.parsing import INT64, parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from ..model import Event
from .shell import PREFIX, Console, json_error

# Events held for one subscriber whose connection is slow; past that it is told to reconnect.
QUEUE_SIZE = 1000
KEEPALIVE = 15.0
# How often a quiet stream checks whether its client is still there.
TICK = 1.0
RETRY_MS = 1000
# A write the client takes longer than this to accept ends the stream (a stalled reader).
WRITE_TIMEOUT = 10.0
# The stream ends this long before the HTTP listener's request time limit would cut it.
TIME_LIMIT_MARGIN = 2.0
# Replay after a Last-Event-ID starts this far before now at the latest, so an event committed
# while the replay start is read is still replayed (duplicates are skipped by seq).
CLOCK_MARGIN = 5.0


def routes(console: Console) -> list[web.RouteDef]:
    async def stream(request: web.Request) -> web.StreamResponse:
        domain = console.domain()
        try:
            types = [t for t in request.query.get("types", "").split(",") if t]
            since = _since(request.query.get("since", ""))
            after = _last_event_id(request)
            if after is not None:
                since = await _replay_start(console, after)
            subscription = domain.events.subscribe(types, since)
        except DomainError as exc:
            return json_error(http_status(exc), str(exc))
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_SIZE)
        pump = asyncio.get_running_loop().create_task(_pump(subscription, queue, after or 0))
        limit = domain.settings.server.http_request_timeout - TIME_LIMIT_MARGIN
        deadline = time.monotonic() + max(limit, 1.0)
        last = after or 0
        wrote = time.monotonic()
        reason = "the daemon is stopping"
        try:
            while True:
                if queue.empty() and pump.done():
                    if not pump.cancelled() and pump.result():
                        reason = f"more than {QUEUE_SIZE} events behind"
                    break
                now = time.monotonic()
                if now >= deadline:
                    reason = "request time limit"
                    break
                if request.transport is None or request.transport.is_closing():
                    return response  # the browser left (aiohttp does not cancel the handler)
                try:
                    event = await asyncio.wait_for(queue.get(), min(TICK, deadline - now))
                except TimeoutError:
                    if time.monotonic() - wrote >= KEEPALIVE:
                        await _write(response, b": keepalive\n\n")
                        wrote = time.monotonic()
                    continue
                if event is None:
                    continue  # the pump ended: the top of the loop says why
                last = event.seq
                await _write(response, _message(event))
                wrote = time.monotonic()
            await _write(response, b"event: reconnect\ndata: " + orjson.dumps(
                {"last_event_id": last, "reason": reason}) + b"\n\n")
        except (ConnectionResetError, TimeoutError):
            pass  # the browser went away or stopped reading: it reconnects with Last-Event-ID
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await subscription.aclose()
        return response

    return [web.get(PREFIX + "/stream", console.api(stream))]


async def _pump(subscription: AsyncIterator[Event], queue: asyncio.Queue[Event | None],
                after: int) -> bool:
    """Hub events into the bounded queue; True when the queue was full (the reader is slow)."""
    overflowed = False
    async for event in subscription:
        if event.seq <= after:
            continue  # replayed by time, already delivered before the reconnect
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            overflowed = True
            break
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(None)  # wake the writer
    return overflowed


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(data)


def _message(event: Event) -> bytes:
    data = orjson.dumps({"seq": event.seq, "type": event.event_type,
                         "resource_id": event.resource_id, "data": event.data,
                         "ts": event.timestamp})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.event_type.encode(), data)


def _since(text: str) -> float:
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"since must be unix seconds, got {text[:40]!r}") from None
    if not 0 <= value < 1e11:
        raise InvalidArgument(f"since must be unix seconds >= 0, got {text[:40]!r}")
    return value


def _last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or request.query.get("last_event_id", "")
    if not text:
        return None
    try:
        return parse_int(text, "last_event_id", 0, INT64[1])
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


async def _replay_start(console: Console, after: int) -> float:
    """A since_timestamp that replays every stored event after seq `after`."""
    floor = time.time() - CLOCK_MARGIN
    oldest = await console.domain().store.read(lambda conn: conn.execute(
        "SELECT MIN(ts) FROM events WHERE seq > ?", (after,)).fetchone()[0])
    start = floor if oldest is None else min(float(oldest), floor)
    return max(start, 1e-6)
