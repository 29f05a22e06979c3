"""Finished task results, kept durably so no task id runs twice within the retention window.

One SQLite file (WAL, synchronous=FULL: a result is on disk before the task's container is removed
and before anyone is told the outcome). Task ids are only ever bound as SQL parameters. The
connection lives on one dedicated thread, so the event loop never blocks on disk and sqlite3 is
never shared between threads.
"""

from __future__ import annotations

import asyncio
import json
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
    finished_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS task_results_finished_at ON task_results (finished_at);
"""


@dataclass(frozen=True)
class StoredResult:
    workload_class: str
    success: bool
    result: dict[str, str]
    error: str
    finished_at: float  # unix seconds


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
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                db.executescript(_SCHEMA)
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

        def read() -> tuple[str, int, str, str, float] | None:
            row: tuple[str, int, str, str, float] | None = self._db.execute(
                "SELECT workload_class, success, error, result, finished_at "
                "FROM task_results WHERE task_id = ? AND finished_at >= ?",
                (task_id, cutoff),
            ).fetchone()
            return row

        row = await self._run(read)
        if row is None:
            return None
        workload_class, success, error, result, finished_at = row
        return StoredResult(workload_class, bool(success), json.loads(result), error, finished_at)

    async def put(self, task_id: str, result: StoredResult) -> None:
        """Record (or replace) the result of `task_id`; durable when this returns."""
        row = (task_id, result.workload_class, int(result.success), result.error,
               json.dumps(result.result), result.finished_at)

        def write() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO task_results "
                "(task_id, workload_class, success, error, result, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", row)

        await self._run(write)

    async def prune(self, older_than: float) -> int:
        """Drop results that finished before `older_than` (unix seconds); how many went."""

        def delete() -> int:
            return self._db.execute(
                "DELETE FROM task_results WHERE finished_at < ?", (older_than,)).rowcount

        return await self._run(delete)

    async def close(self) -> None:
        try:
            await self._run(self._db.close)
        finally:
            self._executor.shutdown(wait=False)
