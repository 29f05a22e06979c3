"""The durable task result store: retention, replacement, pruning, reopening."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agent_infra.env_manager.tasks.store import StoredResult, TaskStore


def result(finished_at: float, stdout: str = "hi\n") -> StoredResult:
    return StoredResult("cpu_short", True, {"stdout": stdout, "exit_code": "0"}, "", finished_at)


async def test_put_get_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tasks.sqlite3"
    store = await TaskStore.open(path, retention=3600)
    now = time.time()
    await store.put("run:1", result(now))
    await store.close()

    reopened = await TaskStore.open(path, retention=3600)
    try:
        assert await reopened.get("run:1") == result(now)
        assert await reopened.get("run:2") is None
    finally:
        await reopened.close()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_results_past_retention_are_not_returned_and_prune(tmp_path: Path) -> None:
    store = await TaskStore.open(tmp_path / "tasks.sqlite3", retention=60)
    try:
        now = time.time()
        await store.put("old", result(now - 120))
        await store.put("new", result(now - 10))
        assert await store.get("old") is None
        assert await store.get("new") is not None
        assert await store.prune(now - 60) == 1
        assert await store.prune(now - 60) == 0
        assert await store.get("new") is not None
    finally:
        await store.close()


async def test_ids_are_data_not_sql(tmp_path: Path) -> None:
    store = await TaskStore.open(tmp_path / "tasks.sqlite3", retention=60)
    try:
        hostile = "x'; DROP TABLE task_results; --"
        await store.put(hostile, result(time.time(), stdout="ü\0\n"))
        stored = await store.get(hostile)
        assert stored is not None and stored.result["stdout"] == "ü\0\n"
        await store.put(hostile, result(time.time(), stdout="again"))
        stored = await store.get(hostile)
        assert stored is not None and stored.result["stdout"] == "again"
    finally:
        await store.close()
