"""Finished task results, kept durably so no task id runs twice within the retention window.

One SQLite file (WAL, synchronous=FULL: a result is on disk before the task's container is removed
and before anyone is told the outcome). Task ids are only ever bound as SQL parameters. The
connection lives on one dedicated thread, so the event loop never blocks on disk and sqlite3 is
never shared between threads.

Each result carries the request_key of the request that ran it (tasks/payload.py): the runner
returns it only to the same request. The file, and SQLite's -wal and -shm beside it (SQLite gives
those the database file's mode), are created 0600: they hold payload output and env values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_results (
    task_id        TEXT PRIMARY KEY,
    workload_class TEXT NOT NULL,
    success        INTEGER NOT NULL,
    error          TEXT NOT NULL,
    result         TEXT NOT NULL,
    finished_at    REAL NOT NULL,
    request_key    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS task_results_finished_at ON task_results (finished_at);
CREATE TABLE IF NOT EXISTS warm_claims (
    task_id      TEXT PRIMARY KEY,
    container_id TEXT NOT NULL,
    labels       TEXT NOT NULL,
    claimed_at   REAL NOT NULL
);
"""


@dataclass(frozen=True)
class WarmClaim:
    """A task handed to a warm container (tasks/warm.py), recorded before the hand-over: the
    container runs that task, and a later process adopts it as the task's container."""

    task_id: str
    container_id: str
    # The labels a container made for the task would carry (tasks/container.py): its class,
    # request, timeout, extras; a warm container's own labels cannot be changed.
    labels: dict[str, str]
    claimed_at: float  # unix seconds: the task's start


@dataclass(frozen=True)
class StoredResult:
    workload_class: str
    success: bool
    result: dict[str, str]
    error: str
    finished_at: float  # unix seconds
    # The request that ran it; "" for results stored before requests were bound (never matches).
    request_key: str = ""


class TaskStore:
    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor,
                 retention: float) -> None:
        self._db = connection
        self._executor = executor
        self.retention = retention

    @classmethod
    async def open(cls, path: Path, *, retention: float) -> Self:
        """Open (creating it and its folder when missing) the store at `path`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-store")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private(path)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                db.executescript(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(task_results)")}
                if "request_key" not in columns:  # a store written before requests were bound
                    db.execute("ALTER TABLE task_results "
                               "ADD COLUMN request_key TEXT NOT NULL DEFAULT ''")
                for suffix in ("-wal", "-shm"):  # left by an older version with another mode
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(f"{path}{suffix}", 0o600)
            except BaseException:
                db.close()
                raise
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(db, executor, retention)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def get(self, task_id: str) -> StoredResult | None:
        """The result of `task_id` if it finished within the retention window."""
        cutoff = time.time() - self.retention

        def read() -> tuple[str, int, str, str, float, str] | None:
            row: tuple[str, int, str, str, float, str] | None = self._db.execute(
                "SELECT workload_class, success, error, result, finished_at, request_key "
                "FROM task_results WHERE task_id = ? AND finished_at >= ?",
                (task_id, cutoff),
            ).fetchone()
            return row

        row = await self._run(read)
        if row is None:
            return None
        workload_class, success, error, result, finished_at, key = row
        return StoredResult(workload_class, bool(success), json.loads(result), error, finished_at,
                            key)

    async def put(self, task_id: str, result: StoredResult) -> None:
        """Record (or replace) the result of `task_id`; durable when this returns."""
        row = (task_id, result.workload_class, int(result.success), result.error,
               json.dumps(result.result), result.finished_at, result.request_key)

        def write() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO task_results "
                "(task_id, workload_class, success, error, result, finished_at, request_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", row)

        await self._run(write)

    async def claim(self, claim: WarmClaim) -> None:
        """Record that `claim.task_id` runs in a warm container; durable when this returns."""
        row = (claim.task_id, claim.container_id, json.dumps(claim.labels), claim.claimed_at)

        def write() -> None:
            self._db.execute("INSERT OR REPLACE INTO warm_claims "
                             "(task_id, container_id, labels, claimed_at) VALUES (?, ?, ?, ?)",
                             row)

        await self._run(write)

    async def unclaim(self, task_id: str) -> None:
        """Forget a claim whose container never ran the task (it then runs the cold way)."""
        await self._run(lambda: self._db.execute("DELETE FROM warm_claims WHERE task_id = ?",
                                                 (task_id,)))

    async def claims(self, task_id: str | None = None) -> list[WarmClaim]:
        """The warm claims recorded (only `task_id`'s when given), newest last."""
        def read() -> list[tuple[str, str, str, float]]:
            query = "SELECT task_id, container_id, labels, claimed_at FROM warm_claims"
            if task_id is None:
                return self._db.execute(query + " ORDER BY claimed_at").fetchall()
            return self._db.execute(query + " WHERE task_id = ?", (task_id,)).fetchall()

        return [WarmClaim(tid, cid, json.loads(labels), at)
                for tid, cid, labels, at in await self._run(read)]

    async def prune(self, older_than: float) -> int:
        """Drop results that finished before `older_than` (unix seconds), and the warm claims of
        tasks whose result is stored (a claim whose container is gone goes at recovery); how
        many results went."""

        def delete() -> int:
            self._db.execute("DELETE FROM warm_claims WHERE task_id IN "
                             "(SELECT task_id FROM task_results)")
            return self._db.execute(
                "DELETE FROM task_results WHERE finished_at < ?", (older_than,)).rowcount

        return await self._run(delete)

    async def close(self) -> None:
        try:
            await self._run(self._db.close)
        finally:
            self._executor.shutdown(wait=False)


def _private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (or make an existing one 0600)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
