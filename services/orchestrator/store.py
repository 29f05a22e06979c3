"""The durable store: one SQLite file in WAL mode, written with group commits.

Every write is a small function run inside a transaction. Writes that arrive while a commit is in
flight wait and go together in the next transaction, so one fsync covers many acknowledged
submits: durability at the cost of one disk flush per batch, not per call.

A batch's statements run on the event loop, against pages SQLite keeps in memory; only COMMIT,
which writes the WAL and waits for fsync, runs on the writer thread, with the GIL released. Running
the statements on the thread too made it take and give back the GIL several times per write
while the loop was busy serving: a batch of 13 submits took 4.5 ms instead of 0.3.

One failing write never takes its batch-mates down: a batch first runs as one plain
transaction; if a write in it raises, that transaction is rolled back and the batch runs again
with a savepoint around each write (so a write must be a function of the transaction alone: it
may run twice). Savepoints cost two statements per write, so they are paid only when needed.

Events are inserted by the same transaction as the change they describe and published to
subscribers only after the commit, in sequence order.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from agent_infra.runtime.errors import Unavailable
from agent_infra.runtime.logs import get_logger

from .model import Event

T = TypeVar("T")
# Batching (see Store._gather): bench/submit_throughput.py went from ~2,600 to ~4,000 submits/s
# with 50 callers, and from ~1,450 to ~1,700 with 4; a single caller's latency did not move.
BATCH_QUIET_TURNS = 10
BATCH_MAX_WAIT_S = 0.004
BATCH_MAX = 512
log = get_logger("store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    task_class TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    workflow_id TEXT NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    seq INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    execution INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    run_id TEXT NOT NULL DEFAULT '',
    step_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, task_class);
CREATE INDEX IF NOT EXISTS tasks_by_workflow ON tasks (workflow_id);
CREATE INDEX IF NOT EXISTS tasks_by_finished ON tasks (finished_at) WHERE finished_at > 0;
-- ListTasks (and the web console's list) pages newest first by seq: without it, every page
-- sorted the whole table.
CREATE INDEX IF NOT EXISTS tasks_by_seq ON tasks (seq);
-- The web console's throughput chart and newest failures (console/queries.py) read only the
-- index: the rows' columns after a large result would be read through its overflow pages.
CREATE INDEX IF NOT EXISTS tasks_finished_summary
    ON tasks (finished_at, status, started_at, submitted_at) WHERE finished_at > 0;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    data TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
"""


def to_json(value: dict[str, str]) -> str:
    """A str-to-str mapping as the JSON text a column stores (orjson: the stdlib's encoder was
    the largest single cost of a submit)."""
    return orjson.dumps(value).decode()


@dataclass
class Tx:
    """One write's view of the transaction: the connection, and events to publish on commit."""

    conn: sqlite3.Connection
    events: list[Event] = field(default_factory=list)

    def event(self, event_type: str, resource_id: str, data: dict[str, str] | None = None,
              ) -> Event:
        now = time.time()
        payload = data or {}
        cursor = self.conn.execute(
            "INSERT INTO events (event_type, resource_id, data, ts) VALUES (?, ?, ?, ?)",
            (event_type, resource_id, to_json(payload), now))
        event = Event(int(cursor.lastrowid or 0), event_type, resource_id, payload, now)
        self.events.append(event)
        return event


@dataclass
class _Write(Generic[T]):
    apply: Callable[[Tx], T]
    future: asyncio.Future[T]


def _owner_only(path: Path) -> None:
    """The database and its -wal and -shm (those present) made mode 0600."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.stat().st_mode & 0o777 != 0o600:
                os.chmod(file, 0o600)
        except FileNotFoundError:
            continue


class Store:
    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        # Looked up once: on Python 3.11 each asyncio.get_running_loop() is a getpid() syscall.
        self._loop = asyncio.get_running_loop()
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._pending: list[_Write[Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop_task: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[list[Event]], None]] = []
        self.commits = 0
        self.writes = 0
        # How long a write waits for another connection's write lock (an operator's sqlite3
        # shell, say) before its batch fails with Unavailable.
        self.lock_timeout = 5.0

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating) the store at `path`: its files (the database, -wal and -shm) are
        the owner's alone (0600; they hold payloads and env values), whatever the umask."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        def connect() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            # Created 0600 before SQLite opens it, so SQLite creates -wal and -shm with the same
            # mode; files an earlier release left 0644 are tightened before anything is written.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            _owner_only(path)
            writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            writer.execute("PRAGMA journal_mode=WAL")
            _owner_only(path)
            # FULL: a commit is on disk (fsync) before any write in it is acknowledged.
            writer.execute("PRAGMA synchronous=FULL")
            writer.executescript(SCHEMA)
            # BEGIN runs on the event loop: it must never sleep there waiting for a lock.
            writer.execute("PRAGMA busy_timeout=0")
            reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA busy_timeout=5000")
            return writer, reader

        try:
            writer, reader = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise Unavailable(f"store {path} cannot be opened: {exc}") from exc
        store = cls(path, writer, reader)
        store._loop_task = store._loop.create_task(store._commit_loop())
        return store

    async def write(self, apply: Callable[[Tx], T]) -> T:
        """Run `apply` in the next group commit; returns once it is on disk."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.append(_Write(apply, future))
        self._idle.clear()
        self._wake.set()
        return await future

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on the reader connection (WAL: readers never wait for the writer)."""
        return await self._loop.run_in_executor(self._read_thread, query, self._reader)

    async def _gather(self) -> list[_Write[Any]]:
        """The writes of the next commit.

        Once a write is pending, the loop turns (no timer: `sleep(0)`) until BATCH_QUIET_TURNS
        turns in a row bring no new write, or BATCH_MAX_WAIT_S passes, or BATCH_MAX writes are
        pending. A commit costs the loop a fixed share of syscalls and thread hand-offs (about
        0.6 ms measured under load), so under load batches grow several-fold and the loop
        serves more RPCs; a lone write waits only those few quick turns.
        """
        deadline = self._loop.time() + BATCH_MAX_WAIT_S
        seen = len(self._pending)
        quiet = 0
        while quiet < BATCH_QUIET_TURNS and seen < BATCH_MAX and self._loop.time() < deadline:
            await asyncio.sleep(0)
            if len(self._pending) == seen:
                quiet += 1
            else:
                quiet = 0
                seen = len(self._pending)
        self._wake.clear()
        batch, self._pending = self._pending, []
        return batch

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            batch = await self._gather()
            if not batch:
                self._idle.set()
                continue
            try:
                outcomes, events = await self._commit(batch)
            except sqlite3.Error as exc:
                error = Unavailable(f"store {self.path} write failed: {exc}")
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(error)
                if not self._pending:
                    self._idle.set()
                continue
            self.commits += 1
            self.writes += len(batch)
            for write, (ok, value) in zip(batch, outcomes, strict=True):
                if write.future.done():
                    continue
                if ok:
                    write.future.set_result(value)
                else:
                    write.future.set_exception(value)
            if events:
                for listener in self.listeners:
                    listener(events)
            if not self._pending:
                self._idle.set()

    async def _commit(self, batch: list[_Write[Any]]
                      ) -> tuple[list[tuple[bool, Any]], list[Event]]:
        conn = self._writer
        await self._begin()
        try:
            done = self._apply_all(conn, batch)
            if done is None:  # a write failed: run the batch again, each write on its own
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                await self._begin()
                done = self._apply_each(conn, batch)
            await self._loop.run_in_executor(self._write_thread, conn.execute, "COMMIT")
        except Exception:
            # (Not on cancellation: the thread may still be committing. Only close() cancels,
            # once no batch is in flight.)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return done

    async def _begin(self) -> None:
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            # Another connection holds the write lock: wait for it off the loop.
            await self._loop.run_in_executor(self._write_thread, self._begin_waiting)

    def _begin_waiting(self) -> None:
        conn = self._writer
        conn.execute(f"PRAGMA busy_timeout={max(0, int(self.lock_timeout * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout=0")

    @staticmethod
    def _apply_all(conn: sqlite3.Connection, batch: list[_Write[Any]]
                   ) -> tuple[list[tuple[bool, Any]], list[Event]] | None:
        """Every write in the open transaction; None as soon as one raises."""
        tx = Tx(conn)
        outcomes: list[tuple[bool, Any]] = []
        for write in batch:
            try:
                outcomes.append((True, write.apply(tx)))
            except Exception:
                return None
        return outcomes, tx.events

    @staticmethod
    def _apply_each(conn: sqlite3.Connection, batch: list[_Write[Any]]
                    ) -> tuple[list[tuple[bool, Any]], list[Event]]:
        """Every write in its own savepoint: a failing one is undone and reported alone."""
        outcomes: list[tuple[bool, Any]] = []
        events: list[Event] = []
        for write in batch:
            tx = Tx(conn)
            conn.execute("SAVEPOINT one_write")
            try:
                value = write.apply(tx)
            except Exception as exc:
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
                outcomes.append((False, exc))
                continue
            conn.execute("RELEASE one_write")
            outcomes.append((True, value))
            events.extend(tx.events)
        return outcomes, events

    async def check_writable(self) -> None:
        """A real write and commit: the Health RPC's proof that the store works."""
        await self.write(lambda tx: tx.conn.execute(
            "CREATE TABLE IF NOT EXISTS health_probe (at REAL)").fetchall())

    async def close(self) -> None:
        if self._loop_task is not None:
            # Let queued and in-flight writes finish before the connections go.
            await self._idle.wait()
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._loop.run_in_executor(self._write_thread, self._writer.close)
        await self._loop.run_in_executor(self._read_thread, self._reader.close)
        self._write_thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)
