"""Task rows: the writes (each with its event, in one transaction) and the queries.

Every state change is guarded in SQL: a task leaves a terminal state never, so whatever races
(a cancel and a completion, a crash and a retry), its record ends in exactly one terminal state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent_infra.runtime.errors import AlreadyExists

from .model import TERMINAL, Task, TaskRequest, TaskState
from .store import Tx, to_json

_COLUMNS = ("id, task_class, payload, priority, workflow_id, timeout_seconds, max_attempts, "
            "content_hash, seq, submitted_at, status, attempts, execution, result, error, "
            "started_at, finished_at, run_id, step_id")
# The same columns with the payload left in the table: what queries that never hand a payload
# out select, so 100,000 pending 1 MB tasks are not read into memory (a Task from these rows has
# an empty payload; `mark_running` loads the real one when the task is dispatched).
_COLUMNS_NO_PAYLOAD = _COLUMNS.replace("payload", "'{}'", 1)
# Neither payload nor result: what a list of tasks shows (ListTasks, the console's list).
_COLUMNS_SUMMARY = _COLUMNS_NO_PAYLOAD.replace("result", "'{}'", 1)
_NOT_TERMINAL = "status NOT IN ({})".format(", ".join(f"'{s.value}'" for s in TERMINAL))


def _task(row: Any) -> Task:
    """A Task from a row selected with _COLUMNS (SQLite gives back the stored types)."""
    (id_, task_class, payload, priority, workflow_id, timeout, max_attempts, content_hash, seq,
     submitted_at, status, attempts, execution, result, error, started_at, finished_at,
     run_id, step_id) = row
    return Task(
        id=id_, task_class=task_class, payload=json.loads(payload), priority=priority,
        workflow_id=workflow_id, timeout_seconds=timeout, max_attempts=max_attempts,
        content_hash=content_hash, seq=seq, submitted_at=submitted_at,
        status=TaskState(status), attempts=attempts, execution=execution,
        result=json.loads(result), error=error,
        started_at=started_at, finished_at=finished_at, run_id=run_id, step_id=step_id,
    )


@dataclass(frozen=True)
class Submitted:
    task: Task
    created: bool  # False: the same task was already there (an idempotent resubmit)


def insert(tx: Tx, request: TaskRequest, seq: int, run_id: str = "", step_id: str = ""
           ) -> Submitted:
    """Store a new task, or return the existing one with the same id and the same content."""
    digest = request.content_hash()
    now = time.time()
    task = Task(
        id=request.id, task_class=request.task_class, payload=dict(request.payload),
        priority=request.priority, workflow_id=request.workflow_id,
        timeout_seconds=request.timeout_seconds, max_attempts=request.max_attempts,
        content_hash=digest, seq=seq, submitted_at=now, run_id=run_id, step_id=step_id,
    )
    # New ids are the common case: insert first, and read the row only when the id exists.
    inserted = tx.conn.execute(
        f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 19)}) "
        "ON CONFLICT (id) DO NOTHING",
        (task.id, task.task_class, to_json(task.payload), task.priority, task.workflow_id,
         task.timeout_seconds, task.max_attempts, task.content_hash, task.seq, now,
         task.status.value, 0, 0, "{}", "", 0.0, 0.0, run_id, step_id)).rowcount
    if not inserted:
        existing = get(tx.conn, request.id)
        assert existing is not None
        if not request.has_content(existing.content_hash):
            raise AlreadyExists(f"task {request.id!r} already exists with a different class, "
                                "payload, priority or workflow_id")
        return Submitted(existing, created=False)
    data = {"task_id": task.id, "class": task.task_class, "priority": str(task.priority)}
    if task.workflow_id:
        data["workflow_id"] = task.workflow_id
    tx.event("task_submitted", task.id, data)
    return Submitted(task, created=True)


def mark_running(tx: Tx, task_id: str, attempts: int, now: float) -> dict[str, str] | None:
    """Mark the task running; its payload (read here: pending payloads stay on disk until
    dispatch), or None when the task is already terminal."""
    cursor = tx.conn.execute(
        f"UPDATE tasks SET status = 'running', attempts = ?, started_at = ? "
        f"WHERE id = ? AND {_NOT_TERMINAL}", (attempts, now, task_id))
    if not cursor.rowcount:
        return None
    tx.event("task_started", task_id, {"task_id": task_id, "attempt": str(attempts)})
    row = tx.conn.execute("SELECT payload FROM tasks WHERE id = ?", (task_id,)).fetchone()
    payload: dict[str, str] = json.loads(row[0])
    return payload


def mark_retrying(tx: Tx, task_id: str, attempts: int, reason: str, delay: float, *,
                  new_execution: bool) -> bool:
    """Back to pending. `new_execution`: the task itself failed, so the next try is a fresh run
    (a new execution id); otherwise the same execution is resumed or attached to."""
    cursor = tx.conn.execute(
        f"UPDATE tasks SET status = 'pending', error = ?, execution = execution + ? "
        f"WHERE id = ? AND {_NOT_TERMINAL}", (reason, int(new_execution), task_id))
    if cursor.rowcount:
        tx.event("task_retrying", task_id, {
            "task_id": task_id, "attempt": str(attempts), "error": reason,
            "delay_seconds": f"{delay:.3f}"})
    return bool(cursor.rowcount)


def finish(tx: Tx, task_id: str, status: TaskState, result: dict[str, str], error: str,
           now: float) -> bool:
    """Move to a terminal state at `now`; False when the task already was in one."""
    assert status.terminal
    cursor = tx.conn.execute(
        f"UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ? "
        f"WHERE id = ? AND {_NOT_TERMINAL}",
        (status.value, to_json(result), error, now, task_id))
    if cursor.rowcount:
        data = {"task_id": task_id, "status": status.value}
        if error:
            data["error"] = error
        tx.event(f"task_{status.value}", task_id, data)
    return bool(cursor.rowcount)


def prune_finished(tx: Tx, cutoff: float, limit: int) -> int:
    """Delete up to `limit` tasks that finished before `cutoff`, keeping every task of a
    workflow run that is not finished yet (its later steps read their results); how many went.
    (The workflow tables exist: the domain creates them before any pruning.)"""
    terminal = ", ".join(f"'{s.value}'" for s in TERMINAL)
    return int(tx.conn.execute(
        "DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks t "
        f"WHERE t.finished_at > 0 AND t.finished_at < ? AND t.status IN ({terminal}) "
        "AND NOT EXISTS (SELECT 1 FROM workflow_runs r WHERE t.run_id != '' "
        "AND r.run_id = t.run_id AND r.status NOT IN ('completed', 'failed')) LIMIT ?)",
        (cutoff, limit)).rowcount)


def get(conn: sqlite3.Connection, task_id: str) -> Task | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return _task(row) if row else None


def get_many(conn: sqlite3.Connection, task_ids: Sequence[str]) -> list[Task]:
    """The tasks with these ids, without their payloads."""
    found: list[Task] = []
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start:start + 500]
        rows = conn.execute(f"SELECT {_COLUMNS_NO_PAYLOAD} FROM tasks WHERE id IN "
                            f"({', '.join('?' * len(chunk))})", tuple(chunk)).fetchall()
        found.extend(_task(row) for row in rows)
    return found


def unfinished(conn: sqlite3.Connection) -> list[Task]:
    """Every pending or running task, without its payload, in submit order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS_NO_PAYLOAD} FROM tasks WHERE {_NOT_TERMINAL} ORDER BY seq")
    return [_task(row) for row in rows]


class QueueKey(NamedTuple):
    """What queueing an unfinished task needs, and no more."""

    id: str
    task_class: str
    priority: int
    seq: int
    status: str


def unfinished_keys(conn: sqlite3.Connection) -> list[QueueKey]:
    """Every pending or running task's queue key, in submit order."""
    rows = conn.execute(f"SELECT id, task_class, priority, seq, status FROM tasks "
                        f"WHERE {_NOT_TERMINAL} ORDER BY seq")
    return [QueueKey(*row) for row in rows]


def max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0])


def page(conn: sqlite3.Connection, *, statuses: Sequence[str], task_class: str,
         workflow_id: str, limit: int, before_seq: int | None, id_prefix: str = "",
         submitted_after: float = 0.0, submitted_before: float = 0.0,
         with_result: bool = True) -> list[Task]:
    """Newest first, without payloads (and without results unless `with_result`);
    `before_seq` continues a previous page. `id_prefix`, `submitted_after` (>=) and
    `submitted_before` (<) narrow it when set."""
    where: list[str] = []
    args: list[object] = []
    if id_prefix:
        where.append("substr(id, 1, ?) = ?")
        args.extend((len(id_prefix), id_prefix))
    if submitted_after:
        where.append("submitted_at >= ?")
        args.append(submitted_after)
    if submitted_before:
        where.append("submitted_at < ?")
        args.append(submitted_before)
    if statuses:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        args.extend(statuses)
    if task_class:
        where.append("task_class = ?")
        args.append(task_class)
    if workflow_id:
        where.append("workflow_id = ?")
        args.append(workflow_id)
    if before_seq is not None:
        where.append("seq < ?")
        args.append(before_seq)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS_NO_PAYLOAD if with_result else _COLUMNS_SUMMARY} FROM tasks "
        f"{clause} ORDER BY seq DESC LIMIT ?",
        (*args, limit)).fetchall()
    return [_task(row) for row in rows]


def counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(class, status) -> number of tasks."""
    rows = conn.execute("SELECT task_class, status, COUNT(*) FROM tasks "
                        "GROUP BY task_class, status")
    return {(str(c), str(s)): int(n) for c, s, n in rows}
