"""The store's group commit on a real SQLite file: batches, a failing write alone, durability."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from agent_infra.orchestrator.model import Event
from agent_infra.orchestrator.store import Store, Tx


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "orchestrator.sqlite3")
    try:
        await opened.write(lambda tx: tx.conn.execute(
            "CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY)"))
        yield opened
    finally:
        await opened.close()


def insert(name: str, *, fail_after: bool = False) -> Callable[[Tx], str]:
    def apply(tx: Tx) -> str:
        tx.conn.execute("INSERT INTO items (name) VALUES (?)", (name,))
        tx.event("item_added", name, {"name": name})
        if fail_after:
            raise ValueError(f"{name} refused after its insert")
        return name
    return apply


def committed_names(path: Path) -> set[str]:
    """What another connection reads from the file: only committed rows."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM items")}


def committed_events(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute(
            "SELECT resource_id FROM events WHERE event_type = 'item_added' ORDER BY seq")]


async def test_concurrent_writes_share_commits_and_are_on_disk_when_they_return(
        store: Store) -> None:
    commits_before = store.commits
    names = [f"item-{i}" for i in range(200)]
    results = await asyncio.gather(*(store.write(insert(name)) for name in names))
    assert results == names
    assert committed_names(store.path) == set(names)
    assert store.commits - commits_before < len(names), "no write shared a commit"


async def test_a_failing_write_is_undone_alone_and_its_batch_mates_commit(store: Store) -> None:
    published: list[Event] = []
    store.listeners.append(published.extend)
    good = [f"good-{i}" for i in range(30)]
    writes = [store.write(insert(name)) for name in good[:15]]
    writes.append(store.write(insert("bad", fail_after=True)))
    writes += [store.write(insert(name)) for name in good[15:]]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], ValueError)
    assert "bad refused" in str(failures[0])
    # The failing write's own insert and event are rolled back; every other write is kept once.
    assert committed_names(store.path) == set(good)
    assert committed_events(store.path) == good
    assert [e.resource_id for e in published] == good
    assert [e.seq for e in published] == sorted(e.seq for e in published)


async def test_a_constraint_error_fails_that_write_only(store: Store) -> None:
    await store.write(insert("taken"))
    outcomes = await asyncio.gather(
        store.write(insert("fresh-1")),
        store.write(insert("taken")),
        store.write(insert("fresh-2")),
        return_exceptions=True)
    assert outcomes[0] == "fresh-1" and outcomes[2] == "fresh-2"
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert committed_names(store.path) == {"taken", "fresh-1", "fresh-2"}


async def test_a_write_on_a_read_only_file_fails_with_unavailable(tmp_path: Path) -> None:
    from agent_infra.runtime.errors import Unavailable

    store = await Store.open(tmp_path / "orchestrator.sqlite3")
    try:
        # A second connection holding the write lock makes BEGIN IMMEDIATE time out.
        store.lock_timeout = 0.2
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Unavailable, match="write failed"):
                await store.write(lambda tx: tx.conn.execute("SELECT 1").fetchall())
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The store keeps working once the lock is gone.
        assert await store.write(lambda tx: tx.conn.execute("SELECT 2").fetchone()[0]) == 2
    finally:
        await store.close()


async def test_a_write_waits_for_another_connections_lock_without_blocking_the_loop(
        store: Store) -> None:
    blocker = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.ensure_future(store.write(insert("after-the-lock")))
        # The loop keeps turning while the write waits for the lock.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not write.done()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await write == "after-the-lock"
    assert "after-the-lock" in committed_names(store.path)


async def test_writes_arriving_over_a_few_loop_turns_share_one_commit(store: Store) -> None:
    commits_before = store.commits

    async def staggered(name: str, turns: int) -> str:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await store.write(insert(name))

    names = [f"turn-{i}" for i in range(6)]
    assert await asyncio.gather(*(staggered(n, i) for i, n in enumerate(names))) == names
    assert store.commits - commits_before == 1
    assert committed_names(store.path) == set(names)


async def test_a_lone_write_is_committed_without_company(store: Store) -> None:
    commits_before = store.commits
    assert await store.write(insert("alone")) == "alone"
    assert store.commits - commits_before == 1
    assert "alone" in committed_names(store.path)
