"""The event hub: replay of stored events from a timestamp, then live delivery, with no gap.

Every event is a row in the store's `events` table, inserted by the transaction that made the
change, and handed to `EventHub` (a store listener) after the commit, in sequence order. A
subscriber gets history from the table and new events from an in-memory queue; the sequence
number is what stitches the two together:

* On subscribe, before any await, the queue is registered and the last published seq is noted
  (the boundary). Every event after it is published from then on, so it lands in the queue;
  every event at or below it is committed, so the table has it.
* Replay reads the table up to the boundary (ts >= since, in pages, so a long history never
  sits in memory), then the queue is drained, skipping anything at or below the last seq
  accounted for. Live events are delivered whatever their timestamp.
* A consumer too slow for its bounded queue is not dropped and not silently skipped: the queue
  is discarded, and the missing range is read back from the table (the "catch-up" path), after
  which live delivery resumes from the same seq. Only retention can take events away from it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from agent_infra.runtime.errors import InvalidArgument, Unavailable
from agent_infra.runtime.logs import get_logger

from .model import Event
from .store import Store

log = get_logger("events")

EVENT_TYPES: tuple[str, ...] = (
    "task_submitted",
    "task_started",
    "task_retrying",
    "task_completed",
    "task_failed",
    "task_cancelled",
    "workflow_created",
    "workflow_started",
    "workflow_step_started",
    "workflow_step_completed",
    "workflow_step_failed",
    "workflow_step_skipped",
    "workflow_completed",
    "workflow_failed",
)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_PAGE_SIZE = 500
# Rows deleted per retention transaction: a long backlog of old events is pruned in slices so
# it never holds the single writer (and every submit waiting on it) for long.
PRUNE_CHUNK = 5_000


def validate_event_types(event_types: Iterable[str]) -> frozenset[str]:
    """The filter as a set (empty = every type); unknown names are the caller's error."""
    wanted = frozenset(event_types)
    unknown = sorted(wanted.difference(EVENT_TYPES))
    if unknown:
        raise InvalidArgument(
            f"event_types: unknown {', '.join(repr(name) for name in unknown)}; "
            f"known types: {', '.join(EVENT_TYPES)}")
    return wanted


class _Subscriber:
    """One subscription's live side: what the store listener touches, on the event loop."""

    __slots__ = ("boundary", "capacity", "closed", "cursor", "overflowed", "queue", "types",
                 "wakeup")

    def __init__(self, types: frozenset[str], capacity: int, boundary: int | None) -> None:
        self.types = types
        self.capacity = capacity
        # Last seq published before registration: older events can only come from the table,
        # newer ones all reach the queue. None while unknown (the hub had published nothing yet);
        # the first event offered, or the hub's baseline read, settles it.
        self.boundary = boundary
        self.cursor = 0  # highest seq delivered or deliberately passed over
        self.queue: deque[Event] = deque()
        self.wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def wants(self, event: Event) -> bool:
        return not self.types or event.event_type in self.types

    def offer(self, events: list[Event]) -> None:
        if self.closed:
            return
        if self.boundary is None:
            # Events are published in seq order, so everything before this batch was never
            # published to this subscriber: exactly the history side.
            self.boundary = events[0].seq - 1
        if self.overflowed:
            return  # the catch-up read will find these in the table
        for event in events:
            if not self.wants(event):
                continue
            if len(self.queue) >= self.capacity:
                # Drop the queue rather than the events: the table has all of them, and
                # holding them here is exactly the memory the bound is meant to cap.
                self.overflowed = True
                self.queue.clear()
                break
            self.queue.append(event)
        self.wakeup.set()


class Subscription(AsyncIterator[Event]):
    """An event stream; ends when the hub closes. Stop early with `aclose()` or by dropping it."""

    def __init__(self, hub: EventHub, subscriber: _Subscriber,
                 events: AsyncGenerator[Event, None]) -> None:
        # The generator refers to the hub and the subscriber, never to this object, so dropping
        # the last reference (a consumer leaving its `async for`) runs __del__ at once.
        self._hub = hub
        self._subscriber = subscriber
        self._events = events
        self._iterating = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        self._iterating = True
        try:
            return await self._events.__anext__()
        finally:
            self._iterating = False

    async def aclose(self) -> None:
        self._hub._detach(self._subscriber)
        # Another task may be inside __anext__: the detach wakes it and its iteration ends;
        # closing a running generator would raise instead.
        if not self._iterating:
            await self._events.aclose()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._hub._detach(self._subscriber)


@dataclass(frozen=True)
class _Range:
    """Rows to read from the table: after < seq <= upto, of the wanted types, ts >= since."""

    after: int
    upto: int
    types: frozenset[str]
    since: float = 0.0


class EventHub:
    def __init__(self, store: Store, *, retention_seconds: float, max_events: int,
                 queue_size: int = DEFAULT_QUEUE_SIZE,
                 page_size: int = DEFAULT_PAGE_SIZE) -> None:
        """`retention_seconds` and `max_events` bound the table; 0 lifts that bound."""
        if retention_seconds < 0 or max_events < 0:
            raise ValueError("retention_seconds and max_events must be >= 0 (0 = unbounded)")
        if queue_size < 1 or page_size < 1:
            raise ValueError("queue_size and page_size must be >= 1")
        self._store = store
        self._retention_seconds = retention_seconds
        self._max_events = max_events
        self._queue_size = queue_size
        self._page_size = page_size
        self._subscribers: set[_Subscriber] = set()
        self._last_published: int | None = None
        self._closed = False
        self.catch_ups = 0  # overflowed queues recovered from the table (observability)
        self.published = 0  # events committed since this process started (GetMetrics)
        store.listeners.append(self._publish)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, event_types: Sequence[str] = (),
                  since_timestamp: float = 0) -> Subscription:
        """Events of `event_types` (empty = all): stored ones with ts >= `since_timestamp`
        first (0 = none: live only), then live ones as they commit.

        Registration happens here, synchronously, so nothing committed after this call is
        missed even if the first `__anext__` comes later.
        """
        types = validate_event_types(event_types)
        if since_timestamp < 0:
            raise InvalidArgument(
                f"since_timestamp must be >= 0 (unix seconds; 0 = live only), "
                f"got {since_timestamp}")
        subscriber = _Subscriber(types, self._queue_size, self._last_published)
        if self._closed:
            subscriber.closed = True
        else:
            self._subscribers.add(subscriber)
        return Subscription(self, subscriber, self._stream(subscriber, since_timestamp))

    def close(self) -> None:
        """End every subscription (their iterators finish) and stop listening: shutdown."""
        self._closed = True
        if self._publish in self._store.listeners:
            self._store.listeners.remove(self._publish)
        for subscriber in self._subscribers:
            subscriber.closed = True
            subscriber.wakeup.set()
        self._subscribers.clear()

    async def prune(self) -> int:
        """Delete events older than the retention period and beyond the newest `max_events`;
        returns how many went."""
        deleted = 0
        if self._retention_seconds > 0:
            cutoff = time.time() - self._retention_seconds
            deleted += await self._delete_in_chunks(
                "DELETE FROM events WHERE seq IN "
                "(SELECT seq FROM events WHERE ts < ? LIMIT ?)", cutoff)
        if self._max_events > 0:
            oldest_kept = await self._store.read(lambda conn: _scalar(
                conn, "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?",
                self._max_events - 1))
            if oldest_kept is not None:
                deleted += await self._delete_in_chunks(
                    "DELETE FROM events WHERE seq IN "
                    "(SELECT seq FROM events WHERE seq < ? ORDER BY seq LIMIT ?)", oldest_kept)
        return deleted

    async def run_retention(self, interval: float) -> None:
        """Prune every `interval` seconds until cancelled or the hub closes."""
        if interval <= 0:
            raise ValueError("retention interval must be > 0 seconds")
        while not self._closed:
            try:
                deleted = await self.prune()
            except Unavailable as exc:
                # A store hiccup must not end retention for good; the next round retries.
                log.warning("events_prune_failed", error=str(exc))
            except Exception:
                # Nor may anything else (a bug): log it, retry next round.
                log.exception("events_prune_failed")
            else:
                if deleted:
                    log.info("events_pruned", deleted=deleted)
            await asyncio.sleep(interval)

    # -- internals --------------------------------------------------------------------------

    def _publish(self, events: list[Event]) -> None:
        self._last_published = events[-1].seq
        self.published += len(events)
        for subscriber in list(self._subscribers):
            try:
                subscriber.offer(events)
            except Exception:
                # One subscriber's failure ends that stream only, never the fan-out.
                log.exception("event_subscriber_error")
                self._detach(subscriber)

    def _detach(self, subscriber: _Subscriber) -> None:
        subscriber.closed = True
        subscriber.queue.clear()
        subscriber.wakeup.set()  # a consumer waiting on it finishes instead of hanging
        self._subscribers.discard(subscriber)

    async def _stream(self, sub: _Subscriber, since: float) -> AsyncGenerator[Event, None]:
        try:
            if since > 0:
                boundary = await self._boundary(sub)
                first = await self._store.read(lambda conn: _scalar(
                    conn, "SELECT MIN(seq) FROM events WHERE ts >= ?", since))
                if first is not None:
                    async for event in self._read(sub, _Range(first - 1, boundary, sub.types,
                                                               since)):
                        yield event
                sub.cursor = max(sub.cursor, boundary)
            while not sub.closed:
                if sub.overflowed:
                    # Between clearing the flag and noting the mark there is no await: events
                    # after the mark go to the queue, those up to it are read from the table.
                    sub.overflowed = False
                    mark = self._last_published or 0
                    # An overflow means something was offered, so the boundary is known.
                    after = max(sub.cursor, sub.boundary or 0)
                    self.catch_ups += 1
                    async for event in self._read(sub, _Range(after, mark, sub.types)):
                        sub.cursor = event.seq
                        yield event
                    sub.cursor = max(sub.cursor, mark)
                    continue
                if not sub.queue:
                    sub.wakeup.clear()
                    await sub.wakeup.wait()
                    continue
                event = sub.queue.popleft()
                if event.seq <= sub.cursor:
                    continue  # already replayed from the table
                sub.cursor = event.seq
                yield event
        finally:
            self._detach(sub)

    async def _boundary(self, sub: _Subscriber) -> int:
        """The subscriber's registration boundary, settling it if the hub knew none then."""
        if sub.boundary is None:
            # A write is a barrier: when it returns, every commit before it has been published,
            # so its view of the newest seq splits history from live exactly, once for the hub.
            newest = await self._store.write(lambda tx: _scalar(
                tx.conn, "SELECT MAX(seq) FROM events") or 0)
            if self._last_published is None:
                self._last_published = newest
            if sub.boundary is None:  # nothing was published since it registered
                sub.boundary = newest
        return sub.boundary

    async def _read(self, sub: _Subscriber, rows: _Range) -> AsyncGenerator[Event, None]:
        after = rows.after
        while not sub.closed and after < rows.upto:
            page = await self._store.read(partial(_page, rows=rows, after=after,
                                                  limit=self._page_size))
            for event in page:
                if sub.closed:
                    return
                yield event
            if len(page) < self._page_size:
                return
            after = page[-1].seq

    async def _delete_in_chunks(self, sql: str, bound: float) -> int:
        deleted = 0
        while True:
            count = await self._store.write(
                lambda tx: tx.conn.execute(sql, (bound, PRUNE_CHUNK)).rowcount)
            deleted += count
            if count < PRUNE_CHUNK:
                return deleted


def _scalar(conn: sqlite3.Connection, sql: str, *params: object) -> int | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _page(conn: sqlite3.Connection, rows: _Range, after: int, limit: int) -> list[Event]:
    sql = "SELECT seq, event_type, resource_id, data, ts FROM events WHERE seq > ? AND seq <= ?"
    params: list[object] = [after, rows.upto]
    if rows.since > 0:
        sql += " AND ts >= ?"
        params.append(rows.since)
    if rows.types:
        sql += f" AND event_type IN ({', '.join('?' * len(rows.types))})"
        params.extend(sorted(rows.types))
    sql += " ORDER BY seq LIMIT ?"
    params.append(limit)
    return [Event(int(seq), event_type, resource_id, json.loads(data), float(ts))
            for seq, event_type, resource_id, data, ts in conn.execute(sql, params)]
