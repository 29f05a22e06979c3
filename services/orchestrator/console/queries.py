"""Read-only store queries the console's pages need beyond the domain's own (charts, failures,
a task's events). Each runs on the store's reader (Store.read), bounded by its LIMIT or window."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ..model import Event

#: Minutes of history in the overview's chart, one bucket a minute.
WINDOW_MINUTES = 15
NEWEST_FAILURES = 8
#: A task page shows at most this many of its events (the newest).
TASK_EVENTS = 200


@dataclass(frozen=True)
class Bucket:
    start: float  # unix seconds, the minute's start
    completed: int
    failed: int
    cancelled: int
    run_seconds: float  # mean of finished_at - started_at over completed and failed
    wait_seconds: float  # mean of started_at - submitted_at over the same


def throughput(conn: sqlite3.Connection, now: float, minutes: int = WINDOW_MINUTES
               ) -> list[Bucket]:
    """Per minute of the last `minutes` (oldest first): tasks finished, and their latency."""
    end = (int(now) // 60 + 1) * 60
    start = end - minutes * 60
    rows = conn.execute(
        "SELECT CAST((finished_at - ?) / 60 AS INTEGER), status, COUNT(*), "
        "AVG(CASE WHEN started_at > 0 THEN finished_at - started_at END), "
        "AVG(CASE WHEN started_at > 0 THEN started_at - submitted_at END) "
        # `finished_at > 0` spelled out: only then may SQLite use the partial index
        # tasks_by_finished (it cannot prove it from a bound parameter), not a full scan.
        "FROM tasks WHERE finished_at > 0 AND finished_at >= ? AND finished_at < ? "
        "GROUP BY 1, 2",
        (start, start, end)).fetchall()
    counts = [{"completed": 0, "failed": 0, "cancelled": 0} for _ in range(minutes)]
    runs: list[list[tuple[int, float, float]]] = [[] for _ in range(minutes)]
    for index, status, count, run, wait in rows:
        if not 0 <= index < minutes or status not in counts[index]:
            continue
        counts[index][status] = int(count)
        if status != "cancelled" and run is not None:
            runs[index].append((int(count), float(run), float(wait or 0.0)))
    buckets = []
    for index in range(minutes):
        total = sum(n for n, _, _ in runs[index])
        run_mean = sum(n * r for n, r, _ in runs[index]) / total if total else 0.0
        wait_mean = sum(n * w for n, _, w in runs[index]) / total if total else 0.0
        buckets.append(Bucket(start + index * 60, counts[index]["completed"],
                              counts[index]["failed"], counts[index]["cancelled"],
                              round(run_mean, 3), round(wait_mean, 3)))
    return buckets


def newest_failures(conn: sqlite3.Connection, limit: int = NEWEST_FAILURES
                    ) -> list[dict[str, object]]:
    rows = conn.execute(
        # +status: walk the finished tasks newest first (tasks_finished_summary) until enough
        # failures, rather than read every failed task to sort them.
        "SELECT id, task_class, error, finished_at FROM tasks "
        "WHERE finished_at > 0 AND +status = 'failed' ORDER BY finished_at DESC LIMIT ?",
        (limit,)).fetchall()
    return [{"id": id_, "class": task_class, "error": error, "finished_at": finished_at}
            for id_, task_class, error, finished_at in rows]


def task_events(conn: sqlite3.Connection, task_id: str, limit: int = TASK_EVENTS
                ) -> list[Event]:
    """The task's events, oldest first (the newest `limit`)."""
    rows = conn.execute(
        "SELECT seq, event_type, resource_id, data, ts FROM events WHERE resource_id = ? "
        "ORDER BY seq DESC LIMIT ?", (task_id, limit)).fetchall()
    return [Event(int(seq), event_type, resource_id, json.loads(data), float(ts))
            for seq, event_type, resource_id, data, ts in reversed(rows)]
