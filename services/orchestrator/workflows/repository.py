"""Workflows and their runs in the store: each change is one transaction, with its event.

Workflows are versioned: creating an id again with the same spec (compared in canonical form) is
idempotent, with a different spec it adds the next version; old versions stay, and a run keeps the
version it started with. A run started with an idempotency key that was used before for the same
workflow returns that run, whatever its state (keys are scoped to their workflow).

Each run and each step ends in exactly one terminal state: every update names the states it may
leave (SQL `WHERE status IN ...`), so a late or repeated update changes nothing and returns False.

A run's output, once it ends, is the result of each completed leaf step (a step no other depends
on), keyed `STEP.KEY`.

For an engine: `start_run`, then `advance_run` tells which steps are ready; submit each one's task
(id `step_task_id(run_id, step_id)`, so a resubmit after a crash is idempotent) and mark it running
with `update_step`; when the task ends, `update_step` to completed or failed, then `advance_run`
again (it skips the descendants of a failed step and finishes the run once every step is
terminal). After a restart, `unfinished_runs` gives every run to pick up where it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TypeVar

from agent_infra.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

from ..store import Store, Tx
from .logic import Actions, RunStatus, StepStatus, next_actions
from .records import (
    LEGACY_RUN_COLUMNS,
    RUNS_TABLE,
    SCHEMA,
    UNFINISHED,
    Run,
    RunStep,
    Workflow,
    find_run,
    first_created,
    latest_workflows,
    load_run,
    load_unfinished,
    load_workflow,
    runs_of,
    spec_from_text,
    workflow_versions,
)
from .spec import WorkflowSpec, validate_workflow_id

__all__ = [
    "Actions", "Run", "RunStatus", "RunStep", "StepStatus", "Workflow", "advance_run",
    "create_workflow", "ensure_schema", "finish_run", "get_run", "get_workflow",
    "list_workflows", "start_run", "step_task_id", "unfinished_runs", "update_step",
]

T = TypeVar("T")
MAX_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 4096
MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_INPUT_BYTES = 1024 * 1024

# The states a step may leave for each target: the guard that makes terminal states final.
_FROM: dict[StepStatus, tuple[StepStatus, ...]] = {
    StepStatus.RUNNING: (StepStatus.PENDING,),
    StepStatus.COMPLETED: (StepStatus.PENDING, StepStatus.RUNNING),
    StepStatus.FAILED: (StepStatus.PENDING, StepStatus.RUNNING),
    StepStatus.SKIPPED: (StepStatus.PENDING,),
}
_STEP_EVENTS = {
    StepStatus.RUNNING: "workflow_step_started",
    StepStatus.COMPLETED: "workflow_step_completed",
    StepStatus.FAILED: "workflow_step_failed",
    StepStatus.SKIPPED: "workflow_step_skipped",
}


async def ensure_schema(store: Store) -> None:
    """Create the workflow tables, or bring older ones up to date (idempotent; run once at
    startup)."""
    def apply(tx: Tx) -> None:
        _migrate_runs(tx.conn)
        # One statement at a time: executescript would COMMIT the store's open transaction.
        for statement in SCHEMA:
            tx.conn.execute(statement)
    await store.write(apply)


def _migrate_runs(conn: sqlite3.Connection) -> None:
    """The first release's workflow_runs had idempotency keys unique over all workflows and no
    original_input/metadata: rebuild it (SQLite cannot drop a constraint), rows kept as they
    are, in the same transaction as the rest of the schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(workflow_runs)")}
    if not columns or "original_input" in columns:
        return
    conn.execute(RUNS_TABLE.replace("workflow_runs", "workflow_runs_scoped", 1))
    conn.execute(f"INSERT INTO workflow_runs_scoped ({LEGACY_RUN_COLUMNS}) "
                 f"SELECT {LEGACY_RUN_COLUMNS} FROM workflow_runs")
    conn.execute("DROP TABLE workflow_runs")  # its indexes go with it; SCHEMA makes them again
    conn.execute("ALTER TABLE workflow_runs_scoped RENAME TO workflow_runs")


def step_task_id(run_id: str, step_id: str) -> str:
    """The id of a step's task: the same on every submit, so a resubmit is the same task."""
    return f"{run_id}:{step_id}"


async def _snapshot(store: Store, query: Callable[[sqlite3.Connection], T]) -> T:
    """Run `query` in one read transaction, so a run and its steps come from the same moment."""
    def read(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN")
        try:
            return query(conn)
        finally:
            conn.execute("COMMIT")
    return await store.read(read)


# ----------------------------------------------------------------------------- workflows


async def create_workflow(store: Store, workflow_id: str, name: str, description: str,
                          spec: WorkflowSpec) -> tuple[int, bool]:
    """(version, created): created False when the latest version already has this spec."""
    validate_workflow_id(workflow_id)
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"workflow name is {len(name)} characters; the limit is "
                              f"{MAX_NAME_CHARS}")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(f"workflow description is {len(description)} characters; the "
                              f"limit is {MAX_DESCRIPTION_CHARS}")
    canonical = spec.canonical_json()

    def apply(tx: Tx) -> tuple[int, bool]:
        latest = tx.conn.execute(
            "SELECT version, spec FROM workflows WHERE id = ? ORDER BY version DESC LIMIT 1",
            (workflow_id,)).fetchone()
        # Only the latest counts: A, then B, then A again makes A the latest (a new version).
        if latest is not None and latest[1] == canonical:
            return int(latest[0]), False
        version = 1 if latest is None else int(latest[0]) + 1
        tx.conn.execute(
            "INSERT INTO workflows (id, version, name, description, spec, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (workflow_id, version, name, description, canonical, time.time()))
        tx.event("workflow_created", workflow_id, {
            "workflow_id": workflow_id, "version": str(version), "name": name,
            "steps": str(len(spec.steps))})
        return version, True

    return await store.write(apply)


async def get_workflow(store: Store, workflow_id: str, version: int | None = None) -> Workflow:
    """The latest version, or the one asked for; NotFound names the id (and version)."""
    return await store.read(lambda conn: load_workflow(conn, workflow_id, version))


async def list_workflows(store: Store) -> list[Workflow]:
    """The latest version of every workflow, by id."""
    return await store.read(latest_workflows)


async def workflow_history(store: Store, workflow_id: str) -> list[Workflow]:
    """Every version of the workflow, newest first (NotFound when there is none)."""
    return await store.read(lambda conn: workflow_versions(conn, workflow_id))


async def created_times(store: Store, workflow_ids: list[str]) -> dict[str, float]:
    """When each workflow's first version was saved."""
    return await store.read(lambda conn: first_created(conn, workflow_ids))


async def list_runs(store: Store, workflow_id: str, limit: int) -> list[Run]:
    """The workflow's runs, newest first (NotFound for an unknown workflow)."""
    def query(conn: sqlite3.Connection) -> list[Run]:
        load_workflow(conn, workflow_id, None)
        return runs_of(conn, workflow_id, limit)
    return await _snapshot(store, query)


# ----------------------------------------------------------------------------- runs


def _check_run_request(workflow_id: str, idempotency_key: str, run_input: Mapping[str, str],
                       ) -> str:
    if not workflow_id:
        raise InvalidArgument("workflow_id is required")
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidArgument(f"idempotency_key is {len(idempotency_key)} characters; the "
                              f"limit is {MAX_IDEMPOTENCY_KEY_CHARS}")
    for key, value in run_input.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"input {key!r}: input keys and values must be strings")
    encoded = json.dumps(dict(run_input), sort_keys=True, ensure_ascii=False)
    if len(encoded.encode()) > MAX_INPUT_BYTES:
        raise ResourceExhausted(f"input is larger than {MAX_INPUT_BYTES} bytes")
    return encoded


async def start_run(store: Store, workflow_id: str, idempotency_key: str,
                    run_input: Mapping[str, str], *, original_input: object = None,
                    metadata: Mapping[str, object] | None = None) -> tuple[Run, bool]:
    """(run, created): the run of the latest version, or the one this key already started
    for this workflow (a key is scoped to its workflow: another workflow may use it too).
    original_input: the input as sent over HTTP when it was more than a string map (`run_input`
    is then its flattened form, what templates read)."""
    encoded = _check_run_request(workflow_id, idempotency_key, run_input)
    original = "" if original_input is None else json.dumps(original_input, ensure_ascii=False)
    meta = json.dumps(dict(metadata or {}), ensure_ascii=False)
    if len(original.encode()) + len(meta.encode()) > MAX_INPUT_BYTES:
        raise ResourceExhausted(f"input and metadata are larger than {MAX_INPUT_BYTES} bytes")

    def apply(tx: Tx) -> tuple[Run, bool]:
        if idempotency_key:
            existing = find_run(tx.conn, "workflow_id = ? AND idempotency_key = ?",
                                (workflow_id, idempotency_key))
            if existing is not None:
                return existing, False
        workflow = load_workflow(tx.conn, workflow_id, None)
        run_id = f"run-{uuid.uuid4().hex}"
        tx.conn.execute(
            "INSERT INTO workflow_runs (run_id, workflow_id, version, idempotency_key, input, "
            "status, created_at, original_input, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, workflow_id, workflow.version, idempotency_key or None, encoded,
             RunStatus.PENDING.value, time.time(), original, meta))
        tx.conn.executemany(
            "INSERT INTO workflow_run_steps (run_id, step_id, status) VALUES (?, ?, ?)",
            [(run_id, step_id, StepStatus.PENDING.value) for step_id in workflow.spec.ids])
        tx.event("workflow_started", run_id, {
            "run_id": run_id, "workflow_id": workflow_id, "version": str(workflow.version),
            "idempotency_key": idempotency_key, "status": RunStatus.PENDING.value})
        return load_run(tx.conn, run_id), True

    return await store.write(apply)


async def get_run(store: Store, run_id: str) -> Run:
    """The run with all its steps; NotFound names the id."""
    return await _snapshot(store, lambda conn: load_run(conn, run_id))


async def unfinished_runs(store: Store) -> list[Run]:
    """Pending and running runs, oldest first: what to resume after a restart."""
    return await _snapshot(store, load_unfinished)


def _step_event(tx: Tx, run: Run, step_id: str, status: StepStatus, task_id: str,
                error: str) -> None:
    tx.event(_STEP_EVENTS[status], run.run_id, {
        "run_id": run.run_id, "workflow_id": run.workflow_id, "step_id": step_id,
        "status": status.value, "task_id": task_id, "error": error})


def _set_step(tx: Tx, run: Run, step_id: str, status: StepStatus, *, task_id: str = "",
              result: Mapping[str, str] | None = None, error: str = "") -> bool:
    """One guarded step transition and its event; False when the step may not make it."""
    if step_id not in run.steps:
        raise NotFound(f"workflow run '{run.run_id}' has no step '{step_id}'")
    allowed = [state.value for state in _FROM[status]]
    marks = ", ".join("?" * len(allowed))
    now = time.time()
    if status == StepStatus.RUNNING:
        sets, args = "task_id = ?, started_at = ?", [task_id, now]
    else:
        sets = ("task_id = CASE WHEN ? = '' THEN task_id ELSE ? END, result = ?, error = ?, "
                "finished_at = ?")
        args = [task_id, task_id, json.dumps(dict(result or {})), error, now]
    cursor = tx.conn.execute(
        f"UPDATE workflow_run_steps SET status = ?, {sets} "
        f"WHERE run_id = ? AND step_id = ? AND status IN ({marks})",
        [status.value, *args, run.run_id, step_id, *allowed])
    if cursor.rowcount == 0:
        return False
    # The first step that moves makes the run running (a pending run has not started any).
    tx.conn.execute("UPDATE workflow_runs SET status = ? WHERE run_id = ? AND status = ?",
                    (RunStatus.RUNNING.value, run.run_id, RunStatus.PENDING.value))
    final_task_id = task_id or run.steps[step_id].task_id
    _step_event(tx, run, step_id, status, final_task_id, error)
    return True


async def complete_inline_step(store: Store, run_id: str, step_id: str,
                               result: Mapping[str, str], event_type: str = "",
                               event_data: Mapping[str, str] | None = None) -> bool:
    """Complete a step that runs no task (a reward, deployment or custom node) with `result`,
    publishing `event_type` (when given) with `event_data` in the same transaction."""
    def apply(tx: Tx) -> bool:
        run = load_run(tx.conn, run_id)
        if run.status.terminal:
            return False
        if not _set_step(tx, run, step_id, StepStatus.COMPLETED, result=result):
            return False
        if event_type:
            tx.event(event_type, run_id, {**(event_data or {}), "run_id": run_id,
                                          "workflow_id": run.workflow_id, "step_id": step_id})
        return True

    return await store.write(apply)


async def update_step(store: Store, run_id: str, step_id: str, status: StepStatus | str, *,
                      task_id: str = "", result: Mapping[str, str] | None = None,
                      error: str = "") -> bool:
    """Move a step to running, completed, failed or skipped; False if it already left the
    states that allow it (so a repeated or late update is harmless). A finished run starts no
    more steps, but still records how its running steps end."""
    target = StepStatus(status)
    if target == StepStatus.PENDING:
        raise ValueError("a step cannot be moved back to pending")

    def apply(tx: Tx) -> bool:
        run = load_run(tx.conn, run_id)
        if target == StepStatus.RUNNING and run.status.terminal:
            return False
        return _set_step(tx, run, step_id, target, task_id=task_id, result=result, error=error)

    return await store.write(apply)


def _run_spec(conn: sqlite3.Connection, run: Run) -> WorkflowSpec:
    """The spec of the version the run started with (later versions never change a run)."""
    row = conn.execute("SELECT spec FROM workflows WHERE id = ? AND version = ?",
                       (run.workflow_id, run.version)).fetchone()
    return spec_from_text(row[0])


def _run_output(run: Run, spec: WorkflowSpec) -> dict[str, str]:
    output: dict[str, str] = {}
    for leaf in spec.leaves():
        step = run.steps[leaf]
        if step.status == StepStatus.COMPLETED:
            output.update({f"{leaf}.{key}": value for key, value in step.result.items()})
    return output


def _run_error(run: Run, spec: WorkflowSpec) -> str:
    failed = [run.steps[step_id] for step_id in spec.order()
              if run.steps[step_id].status == StepStatus.FAILED]
    if not failed:
        return "the run failed"
    more = f" (and {len(failed) - 1} more failed steps)" if len(failed) > 1 else ""
    return f"step '{failed[0].step_id}' failed: {failed[0].error}{more}"


def _finish(tx: Tx, run_id: str, status: RunStatus, error: str,
            output: Mapping[str, str] | None) -> bool:
    run = load_run(tx.conn, run_id)
    if run.status.terminal:
        return False
    spec = _run_spec(tx.conn, run)
    if status == RunStatus.COMPLETED:
        unfinished = [step_id for step_id, step in run.steps.items()
                      if step.status != StepStatus.COMPLETED]
        if unfinished:
            raise FailedPrecondition(
                f"run '{run_id}' cannot complete: steps not completed: {', '.join(unfinished)}")
    else:
        error = error or _run_error(run, spec)
        # Steps that never started end too, so every step has exactly one terminal state.
        for step_id, step in run.steps.items():
            if step.status == StepStatus.PENDING:
                _set_step(tx, run, step_id, StepStatus.SKIPPED, error="skipped: the run failed")
    final_output = dict(output) if output is not None else _run_output(run, spec)
    tx.conn.execute(
        "UPDATE workflow_runs SET status = ?, error = ?, output = ?, finished_at = ? "
        "WHERE run_id = ? AND status IN (?, ?)",
        (status.value, error, json.dumps(final_output), time.time(), run_id, *UNFINISHED))
    event = "workflow_completed" if status == RunStatus.COMPLETED else "workflow_failed"
    tx.event(event, run_id, {"run_id": run_id, "workflow_id": run.workflow_id,
                             "status": status.value, "error": error})
    return True


async def finish_run(store: Store, run_id: str, status: RunStatus | str, *, error: str = "",
                     output: Mapping[str, str] | None = None) -> bool:
    """End a run as completed (every step must be) or failed (its pending steps are skipped).
    Output defaults to the completed leaf steps' results, error to the first failed step's.
    False if the run had already ended."""
    target = RunStatus(status)
    if not target.terminal:
        raise ValueError(f"finish_run needs completed or failed, not {target.value}")
    return await store.write(lambda tx: _finish(tx, run_id, target, error, output))


async def unfinished_run_ids(store: Store) -> list[str]:
    """The ids of pending and running runs, oldest first (nothing else of them is read, so one
    unreadable run cannot hide the others)."""
    rows = await _snapshot(store, lambda conn: conn.execute(
        "SELECT run_id FROM workflow_runs WHERE status IN (?, ?) ORDER BY created_at, run_id",
        UNFINISHED).fetchall())
    return [str(row[0]) for row in rows]


async def abandon_run(store: Store, run_id: str, error: str) -> bool:
    """Fail a run that cannot be moved on (its spec or rows cannot be read or rendered), reading
    nothing but its id: its steps not yet finished end failed or skipped, with `error`. False if
    it had already ended."""
    def apply(tx: Tx) -> bool:
        cursor = tx.conn.execute(
            "UPDATE workflow_runs SET status = ?, error = ?, finished_at = ? "
            "WHERE run_id = ? AND status IN (?, ?)",
            (RunStatus.FAILED.value, error, time.time(), run_id, *UNFINISHED))
        if cursor.rowcount == 0:
            return False
        now = time.time()
        tx.conn.execute(
            "UPDATE workflow_run_steps SET status = ?, error = ?, finished_at = ? "
            "WHERE run_id = ? AND status = ?",
            (StepStatus.SKIPPED.value, "skipped: the run failed", now, run_id,
             StepStatus.PENDING.value))
        tx.conn.execute(
            "UPDATE workflow_run_steps SET status = ?, error = ?, finished_at = ? "
            "WHERE run_id = ? AND status = ?",
            (StepStatus.FAILED.value, error, now, run_id, StepStatus.RUNNING.value))
        row = tx.conn.execute("SELECT workflow_id FROM workflow_runs WHERE run_id = ?",
                              (run_id,)).fetchone()
        tx.event("workflow_failed", run_id, {"run_id": run_id, "workflow_id": str(row[0]),
                                             "status": RunStatus.FAILED.value, "error": error})
        return True

    return await store.write(apply)


async def advance_run(store: Store, run_id: str, *, fail_fast: bool = False) -> Actions:
    """Apply logic.next_actions to the run, in one transaction: skip what a failure
    blocks, end the run once every step is terminal; return the actions (the engine starts
    `ready`). Idempotent: calling it again with nothing changed changes nothing."""
    def apply(tx: Tx) -> Actions:
        run = load_run(tx.conn, run_id)
        if run.status.terminal:
            return Actions([], [], run.status)
        spec = _run_spec(tx.conn, run)
        actions = next_actions(spec, run.step_states(), fail_fast=fail_fast)
        for step_id in actions.skip:
            cause = actions.skip_causes[step_id]
            how = "was skipped" if run.steps[cause].status == StepStatus.SKIPPED else "failed"
            _set_step(tx, run, step_id, StepStatus.SKIPPED,
                      error=f"skipped: step '{cause}' {how}")
        if actions.run_status.terminal:
            _finish(tx, run_id, actions.run_status, "", None)
        return actions

    return await store.write(apply)
