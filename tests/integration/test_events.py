"""The event hub on a real SQLite store: replay then live with no gap or duplicate, filters,
slow-consumer catch-up, retention, subscriber cleanup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agent_infra.orchestrator import events as events_module
from agent_infra.orchestrator.events import EVENT_TYPES, EventHub, Subscription
from agent_infra.orchestrator.model import Event
from agent_infra.orchestrator.store import Store, Tx
from agent_infra.runtime.errors import InvalidArgument

from tests.daemon_support import eventually


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "orchestrator.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


async def emit(store: Store, count: int, event_type: str = "task_submitted",
               prefix: str = "t") -> list[Event]:
    def apply(tx: Tx) -> list[Event]:
        return [tx.event(event_type, f"{prefix}{i}", {"i": str(i)}) for i in range(count)]
    return await store.write(apply)


async def newest_seq(store: Store) -> int:
    return await store.read(lambda conn: int(conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]))


async def collect_until(subscription: Subscription, last_seq: int) -> list[int]:
    """Seqs delivered until `last_seq` has been seen (fails on a stall)."""
    seen: list[int] = []
    async with asyncio.timeout(20):
        async for event in subscription:
            seen.append(event.seq)
            if event.seq >= last_seq:
                return seen
    return seen


async def record(subscription: Subscription, into: list[int]) -> None:
    async for event in subscription:
        into.append(event.seq)


class Writer:
    """Commits events continuously, several writes in flight so group commits batch them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        round_no = 0
        while not self.stop.is_set():
            round_no += 1
            await asyncio.gather(*(emit(self.store, 1 + (round_no + n) % 3, prefix=f"w{round_no}-")
                                   for n in range(4)))
            await asyncio.sleep(0)

    async def finish(self) -> None:
        self.stop.set()
        await self.task


async def test_replay_then_live_has_no_gap_or_duplicate_under_concurrent_commits(
        store: Store) -> None:
    # Tiny pages: the replay awaits the store many times, so commits land in the middle of it.
    hub = EventHub(store, retention_seconds=0, max_events=0, page_size=7)
    history: list[Event] = []
    for _ in range(10):
        history += await emit(store, 12, prefix="h")
    since = history[30].timestamp
    first = min(event.seq for event in history if event.timestamp >= since)

    writer = Writer(store)
    delivered: list[list[int]] = []
    consumers: list[asyncio.Task[None]] = []
    for _ in range(5):  # subscribe at staggered moments while the writer runs
        await asyncio.sleep(0.01)
        seqs: list[int] = []
        delivered.append(seqs)
        consumers.append(asyncio.create_task(
            record(hub.subscribe(since_timestamp=since), seqs)))
    await asyncio.sleep(0.3)
    await writer.finish()
    last = await newest_seq(store)
    assert last > history[-1].seq + 50, "the writer committed too little to test the boundary"

    # Everything committed is delivered; then close ends the streams.
    async def all_caught_up() -> bool:
        return all(seqs and seqs[-1] == last for seqs in delivered)

    await eventually(all_caught_up, "every subscriber to reach the newest event", 20, 0.01)
    hub.close()
    await asyncio.gather(*consumers)
    for seqs in delivered:
        assert seqs == list(range(first, last + 1))


async def test_type_filter_applies_to_replay_and_live(store: Store) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0)
    submitted = await emit(store, 3, "task_submitted")
    completed = await emit(store, 2, "task_completed")
    subscription = hub.subscribe(["task_completed", "task_failed"],
                                 since_timestamp=submitted[0].timestamp)
    await emit(store, 4, "task_submitted")
    failed = await emit(store, 1, "task_failed")

    got: list[Event] = []
    async with asyncio.timeout(10):
        async for event in subscription:
            got.append(event)
            if event.seq == failed[-1].seq:
                break
    assert [e.seq for e in got] == [e.seq for e in completed + failed]
    assert {e.event_type for e in got} == {"task_completed", "task_failed"}
    assert got[0].data == {"i": "0"} and got[0].resource_id == "t0"


def test_unknown_event_types_are_invalid_argument_naming_them(store: Store) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0)
    with pytest.raises(InvalidArgument) as caught:
        hub.subscribe(["task_completed", "task_exploded", "bogus"])
    message = str(caught.value)
    assert "'bogus'" in message and "'task_exploded'" in message
    assert "'task_completed'" not in message.split(";")[0]
    assert all(name in message for name in EVENT_TYPES)
    with pytest.raises(InvalidArgument, match="since_timestamp"):
        hub.subscribe(since_timestamp=-1)
    assert hub.subscriber_count == 0


@pytest.mark.parametrize("since", [0.0, time.time() + 3600])
async def test_zero_or_future_since_is_live_only(store: Store, since: float) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0)
    await emit(store, 5, prefix="old")
    subscription = hub.subscribe(since_timestamp=since)
    live = await emit(store, 3, prefix="new")
    seqs = await collect_until(subscription, live[-1].seq)
    assert seqs == [e.seq for e in live]


async def test_live_only_subscriber_before_any_publish_starts_at_first_live_event(
        tmp_path: Path) -> None:
    # History from a previous run: the hub has published nothing yet when the subscriber joins,
    # and an overflow must still not replay that history.
    path = tmp_path / "orchestrator.sqlite3"
    first_run = await Store.open(path)
    await emit(first_run, 20, prefix="before-restart")
    await first_run.close()
    store = await Store.open(path)
    try:
        hub = EventHub(store, retention_seconds=0, max_events=0, queue_size=2)
        subscription = hub.subscribe()
        live = await emit(store, 10, prefix="live")  # one batch of 10 > queue of 2: overflow
        seqs = await collect_until(subscription, live[-1].seq)
        assert seqs == [e.seq for e in live]
        assert hub.catch_ups == 1
    finally:
        await store.close()


@pytest.mark.parametrize("replay", [False, True])
async def test_slow_consumer_overflow_catches_up_from_the_store(
        store: Store, replay: bool) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0, queue_size=4, page_size=3)
    history = await emit(store, 10, prefix="h")
    subscription = hub.subscribe(since_timestamp=history[0].timestamp if replay else 0)
    first = history[0].seq if replay else history[-1].seq + 1

    async def produce() -> None:
        for round_no in range(30):
            await emit(store, 7, prefix=f"r{round_no}-")
            await asyncio.sleep(0.001)

    producer = asyncio.create_task(produce())
    seen: list[int] = []
    async with asyncio.timeout(20):
        async for event in subscription:
            seen.append(event.seq)
            await asyncio.sleep(0.002)  # slower than the producer: the queue overflows
            if producer.done() and event.seq == await newest_seq(store):
                break
    await producer
    assert seen == list(range(first, history[-1].seq + 30 * 7 + 1))
    assert hub.catch_ups >= 1
    del subscription
    assert hub.subscriber_count == 0


async def test_prune_by_age_and_by_count(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "PRUNE_CHUNK", 3)  # exercise the sliced deletes
    old = await emit(store, 8, prefix="old")
    await store.write(lambda tx: tx.conn.execute(
        "UPDATE events SET ts = ? WHERE seq <= ?", (time.time() - 7200, old[-1].seq)))
    recent = await emit(store, 12, prefix="new")

    by_age = EventHub(store, retention_seconds=3600, max_events=0)
    assert await by_age.prune() == 8
    assert await by_age.prune() == 0
    by_count = EventHub(store, retention_seconds=3600, max_events=5)
    assert await by_count.prune() == 7
    kept = await store.read(lambda conn: [int(r[0]) for r in conn.execute(
        "SELECT seq FROM events ORDER BY seq")])
    assert kept == [e.seq for e in recent[-5:]]


async def test_run_retention_prunes_periodically(store: Store) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=3)
    retention = asyncio.create_task(hub.run_retention(0.02))
    try:
        await emit(store, 10)

        async def pruned() -> bool:
            count: int = await store.read(lambda conn: conn.execute(
                "SELECT COUNT(*) FROM events").fetchone()[0])
            return count == 3

        await eventually(pruned, "retention to keep the newest 3 events", 5, 0.01)
    finally:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention


async def test_subscriber_is_removed_when_the_consumer_stops(store: Store) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0)
    # Breaking out of `async for`.
    history = await emit(store, 3)
    async for _event in hub.subscribe(since_timestamp=history[0].timestamp):
        assert hub.subscriber_count == 1
        break
    assert hub.subscriber_count == 0

    # A consumer cancelled while waiting (a gRPC client going away).
    subscription = hub.subscribe()
    waiting = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert hub.subscriber_count == 0
    del subscription

    # aclose() from another task while a consumer waits: the consumer's iteration ends.
    subscription = hub.subscribe()
    waiting_list = asyncio.create_task(record(subscription, []))
    await asyncio.sleep(0.01)
    await subscription.aclose()
    async with asyncio.timeout(5):
        await waiting_list
    assert hub.subscriber_count == 0
    del subscription

    # aclose() via `async with`, and a subscription dropped before it was ever iterated.
    async with hub.subscribe():
        assert hub.subscriber_count == 1
    assert hub.subscriber_count == 0
    hub.subscribe()
    gc.collect()
    assert hub.subscriber_count == 0
    # Later commits reach no leftover queue.
    await emit(store, 5)
    assert hub.subscriber_count == 0


async def test_close_ends_every_subscription(store: Store) -> None:
    hub = EventHub(store, retention_seconds=0, max_events=0)
    history = await emit(store, 3)

    async def drain(subscription: Subscription) -> list[int]:
        return [event.seq async for event in subscription]

    live = asyncio.create_task(drain(hub.subscribe()))
    replaying = asyncio.create_task(drain(hub.subscribe(since_timestamp=history[0].timestamp)))
    await asyncio.sleep(0.05)
    hub.close()
    async with asyncio.timeout(5):
        assert await live == []
        assert await replaying == [e.seq for e in history]
    assert hub.subscriber_count == 0
    assert hub._publish not in store.listeners
    assert [e async for e in hub.subscribe()] == []
