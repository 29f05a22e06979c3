"""Workflow and run records as `repository` keeps them, and the SQL that reads them back."""

from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from agent_infra.runtime.errors import NotFound

from .logic import RunStatus, StepStatus
from .spec import WorkflowSpec, parse_spec
from .templating import RenderContext

RUNS_TABLE = """CREATE TABLE IF NOT EXISTS workflow_runs (
        run_id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        idempotency_key TEXT,
        input TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        output TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0,
        original_input TEXT NOT NULL DEFAULT '',
        metadata TEXT NOT NULL DEFAULT '{}',
        UNIQUE (workflow_id, idempotency_key)
    )"""
# The columns of the first release's workflow_runs (its idempotency_key was UNIQUE on its own).
LEGACY_RUN_COLUMNS = ("run_id, workflow_id, version, idempotency_key, input, status, error, "
                      "output, created_at, finished_at")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS workflows (
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (id, version)
    )""",
    # idempotency_key NULL = started without a key (UNIQUE allows any number of NULLs); a key is
    # scoped to its workflow. original_input: the input as the caller sent it over HTTP (any
    # JSON object), '' when it was the string map `input` holds.
    RUNS_TABLE,
    "CREATE INDEX IF NOT EXISTS workflow_runs_by_status ON workflow_runs (status)",
    "CREATE INDEX IF NOT EXISTS workflow_runs_by_workflow ON workflow_runs (workflow_id)",
    """CREATE TABLE IF NOT EXISTS workflow_run_steps (
        run_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        task_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        result TEXT NOT NULL DEFAULT '{}',
        error TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL DEFAULT 0,
        finished_at REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, step_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS workflow_run_steps_by_task ON workflow_run_steps (task_id)",
)

UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


@dataclass(frozen=True)
class Workflow:
    id: str
    version: int
    name: str
    description: str
    spec: WorkflowSpec
    created_at: float


@dataclass(frozen=True)
class RunStep:
    run_id: str
    step_id: str
    task_id: str  # "" until the step's task is submitted
    status: StepStatus
    result: dict[str, str]
    error: str
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class Run:
    run_id: str
    workflow_id: str
    version: int
    idempotency_key: str  # "" when started without one
    input: dict[str, str]
    status: RunStatus
    error: str
    output: dict[str, str]
    created_at: float
    finished_at: float
    steps: dict[str, RunStep]  # by step id, in id order
    original_input: Any = None  # the input as sent over HTTP, when it was not a string map
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def updated_at(self) -> float:
        """When anything of the run last changed."""
        return max([self.created_at, self.finished_at,
                    *(max(step.started_at, step.finished_at) for step in self.steps.values())])

    def step_states(self) -> dict[str, str]:
        """What logic.next_actions takes."""
        return {step_id: step.status.value for step_id, step in self.steps.items()}

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    @property
    def steps_completed(self) -> int:
        return sum(step.status == StepStatus.COMPLETED for step in self.steps.values())

    @property
    def current_step(self) -> str:
        """The running steps, comma-separated (parallel branches run several at once)."""
        return ",".join(step_id for step_id, step in self.steps.items()
                        if step.status == StepStatus.RUNNING)

    def render_context(self) -> RenderContext:
        """For rendering any step's payload (the spec guarantees it only reads ancestors)."""
        return RenderContext(self.run_id, self.workflow_id, self.input, self.steps)


@functools.lru_cache(maxsize=256)
def spec_from_text(text: str) -> WorkflowSpec:
    # A version's spec never changes, so its parse can be cached by text. Classes are not checked:
    # they were when it was created, and a class dropped from config since must not hide history.
    return parse_spec(text, None)


_WORKFLOW_COLUMNS = "id, version, name, description, spec, created_at"
_RUN_COLUMNS = f"{LEGACY_RUN_COLUMNS}, original_input, metadata"
_STEP_COLUMNS = "run_id, step_id, task_id, status, result, error, started_at, finished_at"


def workflow_from_row(row: tuple[Any, ...]) -> Workflow:
    wid, version, name, description, spec, created_at = row
    return Workflow(wid, version, name, description, spec_from_text(spec), created_at)


def load_workflow(conn: sqlite3.Connection, workflow_id: str, version: int | None) -> Workflow:
    if version is None:
        row = conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = ? "
            "ORDER BY version DESC LIMIT 1", (workflow_id,)).fetchone()
    else:
        row = conn.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = ? AND version = ?",
            (workflow_id, version)).fetchone()
    if row is not None:
        return workflow_from_row(row)
    latest = conn.execute(
        "SELECT MAX(version) FROM workflows WHERE id = ?", (workflow_id,)).fetchone()[0]
    if latest is None:
        raise NotFound(f"workflow '{workflow_id}' not found")
    raise NotFound(f"workflow '{workflow_id}' has no version {version} (latest is {latest})")


def workflow_versions(conn: sqlite3.Connection, workflow_id: str) -> list[Workflow]:
    """Every version of a workflow, newest first; NotFound when it has none."""
    rows = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = ? ORDER BY version DESC",
        (workflow_id,)).fetchall()
    if not rows:
        raise NotFound(f"workflow '{workflow_id}' not found")
    return [workflow_from_row(row) for row in rows]


def first_created(conn: sqlite3.Connection, workflow_ids: list[str]) -> dict[str, float]:
    """When each workflow's first version was saved (its created_at, whatever replaced it)."""
    found: dict[str, float] = {}
    for start in range(0, len(workflow_ids), 500):
        chunk = workflow_ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for wid, created in conn.execute(
                f"SELECT id, MIN(created_at) FROM workflows WHERE id IN ({marks}) GROUP BY id",
                chunk):
            found[str(wid)] = float(created)
    return found


def runs_of(conn: sqlite3.Connection, workflow_id: str, limit: int) -> list[Run]:
    """A workflow's runs, newest first."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE workflow_id = ? "
        "ORDER BY created_at DESC, run_id DESC LIMIT ?", (workflow_id, limit)).fetchall()
    runs = []
    for row in rows:
        steps = conn.execute(f"SELECT {_STEP_COLUMNS} FROM workflow_run_steps WHERE run_id = ?",
                             (row[0],)).fetchall()
        runs.append(_run_from_row(row, [_step_from_row(step) for step in steps]))
    return runs


def latest_workflows(conn: sqlite3.Connection) -> list[Workflow]:
    rows = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows AS w WHERE version = "
        "(SELECT MAX(version) FROM workflows WHERE id = w.id) ORDER BY id").fetchall()
    return [workflow_from_row(row) for row in rows]


def _step_from_row(row: tuple[Any, ...]) -> RunStep:
    run_id, step_id, task_id, status, result, error, started_at, finished_at = row
    return RunStep(run_id, step_id, task_id, StepStatus(status), json.loads(result), error,
                   started_at, finished_at)


def _run_from_row(row: tuple[Any, ...], steps: list[RunStep]) -> Run:
    (run_id, workflow_id, version, key, input_json, status, error, output, created_at,
     finished_at, original_input, metadata) = row
    return Run(run_id, workflow_id, version, key or "", json.loads(input_json),
               RunStatus(status), error, json.loads(output), created_at, finished_at,
               {step.step_id: step for step in sorted(steps, key=lambda step: step.step_id)},
               json.loads(original_input) if original_input else None, json.loads(metadata))


def find_run(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> Run | None:
    """The one run matching `where` (a constant SQL condition; values only ever in args)."""
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE {where}", args).fetchone()
    if row is None:
        return None
    steps = conn.execute(
        f"SELECT {_STEP_COLUMNS} FROM workflow_run_steps WHERE run_id = ?", (row[0],)).fetchall()
    return _run_from_row(row, [_step_from_row(step) for step in steps])


def load_run(conn: sqlite3.Connection, run_id: str) -> Run:
    run = find_run(conn, "run_id = ?", (run_id,))
    if run is None:
        raise NotFound(f"workflow run '{run_id}' not found")
    return run


def load_unfinished(conn: sqlite3.Connection) -> list[Run]:
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE status IN (?, ?) "
        "ORDER BY created_at, run_id", UNFINISHED).fetchall()
    steps: dict[str, list[RunStep]] = {row[0]: [] for row in rows}
    for step_row in conn.execute(
            f"SELECT {_STEP_COLUMNS} FROM workflow_run_steps WHERE run_id IN "
            "(SELECT run_id FROM workflow_runs WHERE status IN (?, ?))", UNFINISHED):
        step = _step_from_row(step_row)
        # A run may finish between the two selects outside a snapshot; keep only listed runs.
        if step.run_id in steps:
            steps[step.run_id].append(step)
    return [_run_from_row(row, steps[row[0]]) for row in rows]
