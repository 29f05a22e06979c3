"""The workflow store on a real SQLite file: versions, idempotent runs, terminal states, events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_infra.orchestrator.model import Event
from agent_infra.orchestrator.store import Store
from agent_infra.orchestrator.workflows import repository as ws
from agent_infra.orchestrator.workflows.logic import Actions, RunStatus, StepStatus
from agent_infra.orchestrator.workflows.spec import WorkflowSpec, parse_spec
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

CLASSES = {"cpu_short", "gpu"}


def spec(document: dict[str, Any]) -> WorkflowSpec:
    return parse_spec(json.dumps(document).encode(), CLASSES)


DIAMOND = spec({"steps": [
    {"id": "a", "payload": {"who": "{{ input.name }}"}},
    {"id": "b", "depends_on": ["a"], "payload": {"v": "{{ steps.a.result.out }}"}},
    {"id": "c", "depends_on": ["a"]},
    {"id": "d", "depends_on": ["b", "c"]},
]})


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, events: list[Event]) -> None:
        self.events.extend(events)

    def types(self) -> list[str]:
        return [event.event_type for event in self.events]

    def take(self) -> list[Event]:
        taken, self.events = self.events, []
        return taken


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state" / "orchestrator.sqlite3")
    await ws.ensure_schema(opened)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def events(store: Store) -> Recorder:
    recorder = Recorder()
    store.listeners.append(recorder)
    return recorder


# ----------------------------------------------------------------------------- workflows


async def test_create_is_idempotent_and_new_spec_is_new_version(
        store: Store, events: Recorder) -> None:
    assert await ws.create_workflow(store, "etl", "ETL", "nightly", DIAMOND) == (1, True)
    [created] = events.take()
    assert created.event_type == "workflow_created" and created.resource_id == "etl"
    assert created.data == {"workflow_id": "etl", "version": "1", "name": "ETL", "steps": "4"}

    # Same spec written differently: same version, no event.
    same = spec({"nodes": [{"id": "d"}, {"id": "c"}, {"id": "b", "payload": {
        "v": "{{ steps.a.result.out }}"}},
        {"id": "a", "payload": {"who": "{{ input.name }}"}, "class": "cpu_short"}],
        "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"},
                  {"from": "b", "to": "d"}, {"from": "c", "to": "d"}]})
    assert await ws.create_workflow(store, "etl", "ETL", "nightly", same) == (1, False)
    assert events.take() == []

    changed = spec({"steps": [{"id": "a", "retries": 3}]})
    assert await ws.create_workflow(store, "etl", "ETL v2", "", changed) == (2, True)
    assert await ws.create_workflow(store, "etl", "ETL v2", "", changed) == (2, False)
    # Back to the first spec: a change from the latest, so a new version.
    assert await ws.create_workflow(store, "etl", "ETL", "", DIAMOND) == (3, True)
    assert [e.data["version"] for e in events.take()] == ["2", "3"]

    latest = await ws.get_workflow(store, "etl")
    assert latest.version == 3 and latest.spec == DIAMOND
    first = await ws.get_workflow(store, "etl", 1)
    assert (first.name, first.description, first.spec) == ("ETL", "nightly", DIAMOND)
    second = await ws.get_workflow(store, "etl", 2)
    assert second.spec == changed and second.spec.step("a").max_attempts == 4


async def test_get_workflow_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="workflow 'nope' not found"):
        await ws.get_workflow(store, "nope")
    await ws.create_workflow(store, "w", "", "", DIAMOND)
    with pytest.raises(NotFound, match="workflow 'w' has no version 7 \\(latest is 1\\)"):
        await ws.get_workflow(store, "w", 7)


async def test_list_workflows_latest_of_each(store: Store) -> None:
    await ws.create_workflow(store, "b", "", "", DIAMOND)
    await ws.create_workflow(store, "a", "", "", DIAMOND)
    await ws.create_workflow(store, "a", "", "", spec({"steps": [{"id": "x"}]}))
    listed = await ws.list_workflows(store)
    assert [(w.id, w.version) for w in listed] == [("a", 2), ("b", 1)]


async def test_create_validates(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="workflow id is required"):
        await ws.create_workflow(store, "", "", "", DIAMOND)
    with pytest.raises(InvalidArgument, match="invalid"):
        await ws.create_workflow(store, "a/b", "", "", DIAMOND)
    with pytest.raises(InvalidArgument, match="name is 300 characters"):
        await ws.create_workflow(store, "w", "n" * 300, "", DIAMOND)


async def test_stored_spec_with_a_class_no_longer_configured_still_loads(store: Store) -> None:
    gpu = spec({"steps": [{"id": "a", "class": "gpu"}]})
    await ws.create_workflow(store, "w", "", "", gpu)
    assert (await ws.get_workflow(store, "w")).spec.step("a").task_class == "gpu"


# ----------------------------------------------------------------------------- runs


async def test_start_run_and_idempotency_key(store: Store, events: Recorder) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    events.take()
    run, created = await ws.start_run(store, "etl", "key-1", {"name": "x"})
    assert created
    assert run.run_id.startswith("run-") and len(run.run_id) == 36
    assert (run.workflow_id, run.version, run.idempotency_key) == ("etl", 1, "key-1")
    assert run.status == RunStatus.PENDING and run.input == {"name": "x"}
    assert list(run.steps) == ["a", "b", "c", "d"]
    assert all(step.status == StepStatus.PENDING for step in run.steps.values())
    assert (run.total_steps, run.steps_completed, run.current_step) == (4, 0, "")
    [started] = events.take()
    assert started.event_type == "workflow_started" and started.resource_id == run.run_id
    assert started.data["workflow_id"] == "etl" and started.data["idempotency_key"] == "key-1"

    again, created_again = await ws.start_run(store, "etl", "key-1", {"name": "other input"})
    assert not created_again and again == run
    assert events.take() == []

    # Even a finished run is returned for its key.
    await ws.update_step(store, run.run_id, "a", "failed", error="boom")
    await ws.advance_run(store, run.run_id)
    finished, created_again = await ws.start_run(store, "etl", "key-1", {})
    assert not created_again and finished.run_id == run.run_id
    assert finished.status == RunStatus.FAILED

    # No key: every start is a new run.
    one, _ = await ws.start_run(store, "etl", "", {})
    two, _ = await ws.start_run(store, "etl", "", {})
    assert one.run_id != two.run_id and one.idempotency_key == ""


async def test_idempotency_key_is_scoped_to_its_workflow(store: Store) -> None:
    await ws.create_workflow(store, "one", "", "", DIAMOND)
    await ws.create_workflow(store, "two", "", "", DIAMOND)
    run, created = await ws.start_run(store, "one", "shared", {})
    other, other_created = await ws.start_run(store, "two", "shared", {})
    assert created and other_created and other.run_id != run.run_id
    assert other.workflow_id == "two" and other.idempotency_key == "shared"
    again, again_created = await ws.start_run(store, "two", "shared", {})
    assert (again.run_id, again_created) == (other.run_id, False)
    first_again, _ = await ws.start_run(store, "one", "shared", {})
    assert first_again.run_id == run.run_id


# The first release's workflow_runs: idempotency keys unique over every workflow.
LEGACY_RUNS = """CREATE TABLE workflow_runs (
    run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, version INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE, input TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', output TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL, finished_at REAL NOT NULL DEFAULT 0)"""


async def test_a_store_of_the_first_release_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old" / "orchestrator.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute(LEGACY_RUNS)
        conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, version, idempotency_key, "
                     "input, status, created_at) VALUES ('run-old', 'one', 1, 'shared', "
                     "'{\"x\": \"1\"}', 'completed', 5.0)")
    conn.close()
    store = await Store.open(path)
    try:
        await ws.ensure_schema(store)
        await ws.ensure_schema(store)  # idempotent
        await ws.create_workflow(store, "one", "", "", DIAMOND)
        await ws.create_workflow(store, "two", "", "", DIAMOND)
        old = await ws.get_run(store, "run-old")
        assert (old.workflow_id, old.idempotency_key, old.input, old.status) == (
            "one", "shared", {"x": "1"}, RunStatus.COMPLETED)
        assert old.original_input is None and old.metadata == {}
        same, created = await ws.start_run(store, "one", "shared", {})
        assert (same.run_id, created) == ("run-old", False)
        other, created = await ws.start_run(store, "two", "shared", {})
        assert created and other.run_id != "run-old"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"workflow_runs_by_status", "workflow_runs_by_workflow"} <= names
    assert "workflow_runs_scoped" not in names


async def test_concurrent_starts_with_one_key_make_one_run(store: Store) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    results = await asyncio.gather(*(ws.start_run(store, "etl", "k", {}) for _ in range(20)))
    assert len({run.run_id for run, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_start_run_errors(store: Store) -> None:
    with pytest.raises(NotFound, match="workflow 'ghost' not found"):
        await ws.start_run(store, "ghost", "k", {})
    with pytest.raises(InvalidArgument, match="workflow_id is required"):
        await ws.start_run(store, "", "k", {})
    await ws.create_workflow(store, "w", "", "", DIAMOND)
    with pytest.raises(InvalidArgument, match="idempotency_key is 300 characters"):
        await ws.start_run(store, "w", "k" * 300, {})
    # A failed start left the key free.
    _, created = await ws.start_run(store, "w", "k", {})
    assert created


async def test_run_keeps_the_version_it_started_with(store: Store) -> None:
    await ws.create_workflow(store, "w", "", "", DIAMOND)
    run, _ = await ws.start_run(store, "w", "", {})
    await ws.create_workflow(store, "w", "", "", spec({"steps": [{"id": "solo"}]}))
    later, _ = await ws.start_run(store, "w", "", {})
    assert (run.version, later.version) == (1, 2)
    assert list(later.steps) == ["solo"]
    actions = await ws.advance_run(store, run.run_id)
    assert actions.ready == ["a"]


async def test_get_run_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="workflow run 'run-x' not found"):
        await ws.get_run(store, "run-x")


# ----------------------------------------------------------------------------- steps


async def test_diamond_run_to_completion(store: Store, events: Recorder) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    run, _ = await ws.start_run(store, "etl", "", {"name": "x"})
    rid = run.run_id
    events.take()

    async def start(step_id: str) -> None:
        assert await ws.update_step(store, rid, step_id, StepStatus.RUNNING,
                                    task_id=ws.step_task_id(rid, step_id))

    async def complete(step_id: str, result: dict[str, str]) -> list[str]:
        assert await ws.update_step(store, rid, step_id, "completed", result=result)
        return (await ws.advance_run(store, rid)).ready

    assert (await ws.advance_run(store, rid)).ready == ["a"]
    await start("a")
    running = await ws.get_run(store, rid)
    assert running.status == RunStatus.RUNNING and running.current_step == "a"
    assert running.steps["a"].task_id == f"{rid}:a" and running.steps["a"].started_at > 0
    # The engine renders b's payload from the run's records.
    assert await complete("a", {"out": "42"}) == ["b", "c"]
    after_a = await ws.get_run(store, rid)
    assert DIAMOND.step("b").render_payload(after_a.render_context()) == {"v": "42"}
    await start("b")
    await start("c")
    assert (await ws.get_run(store, rid)).current_step == "b,c"
    assert await complete("b", {}) == []
    assert await complete("c", {}) == ["d"]
    await start("d")
    actions = await ws.advance_run(store, rid)
    assert actions.ready == [] and actions.run_status == RunStatus.RUNNING
    assert await complete("d", {"answer": "yes", "n": "1"}) == []

    done = await ws.get_run(store, rid)
    assert done.status == RunStatus.COMPLETED and done.finished_at > 0
    assert done.output == {"d.answer": "yes", "d.n": "1"}
    assert done.steps_completed == 4 and done.error == ""
    assert done.steps["a"].result == {"out": "42"}
    assert done.steps["d"].task_id == f"{rid}:d"

    types = events.types()
    assert types.count("workflow_step_started") == 4
    assert types.count("workflow_step_completed") == 4
    assert types[-1] == "workflow_completed"
    last = events.events[-1]
    assert last.resource_id == rid
    assert last.data == {"run_id": rid, "workflow_id": "etl", "status": "completed", "error": ""}
    step_event = next(e for e in events.events if e.event_type == "workflow_step_completed")
    assert step_event.data == {"run_id": rid, "workflow_id": "etl", "step_id": "a",
                               "status": "completed", "task_id": f"{rid}:a", "error": ""}
    assert all(isinstance(v, str) for e in events.events for v in e.data.values())
    seqs = [e.seq for e in events.events]
    assert seqs == sorted(seqs)

    # Finished: nothing more happens.
    assert await ws.advance_run(store, rid) == Actions([], [], RunStatus.COMPLETED)
    assert not await ws.finish_run(store, rid, "failed")


async def test_failing_branch_skips_descendants_and_running_sibling_finishes(
        store: Store, events: Recorder) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    run, _ = await ws.start_run(store, "etl", "", {})
    rid = run.run_id
    await ws.update_step(store, rid, "a", "running", task_id="t-a")
    await ws.update_step(store, rid, "a", "completed", result={"out": "1"})
    await ws.update_step(store, rid, "b", "running", task_id="t-b")
    await ws.update_step(store, rid, "c", "running", task_id="t-c")
    events.take()

    assert await ws.update_step(store, rid, "b", "failed", error="exit code 3")
    actions = await ws.advance_run(store, rid)
    assert actions.skip == ["d"] and actions.ready == []
    assert actions.run_status == RunStatus.RUNNING
    mid = await ws.get_run(store, rid)
    assert mid.status == RunStatus.RUNNING
    assert mid.steps["d"].status == StepStatus.SKIPPED
    assert mid.steps["d"].error == "skipped: step 'b' failed"
    assert mid.steps["c"].status == StepStatus.RUNNING

    assert await ws.update_step(store, rid, "c", "completed", result={"ok": "1"})
    final = await ws.advance_run(store, rid)
    assert final.run_status == RunStatus.FAILED
    done = await ws.get_run(store, rid)
    assert done.status == RunStatus.FAILED
    assert done.error == "step 'b' failed: exit code 3"
    assert {s: step.status.value for s, step in done.steps.items()} == {
        "a": "completed", "b": "failed", "c": "completed", "d": "skipped"}
    assert events.types() == ["workflow_step_failed", "workflow_step_skipped",
                              "workflow_step_completed", "workflow_failed"]
    failed = events.events[-1].data
    assert failed["error"] == "step 'b' failed: exit code 3" and failed["status"] == "failed"


async def test_one_terminal_state_per_step_and_run(store: Store, events: Recorder) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    run, _ = await ws.start_run(store, "etl", "", {})
    rid = run.run_id
    assert await ws.update_step(store, rid, "a", "running", task_id="t")
    assert not await ws.update_step(store, rid, "a", "running", task_id="t2")  # already running
    assert await ws.update_step(store, rid, "a", "completed", result={"x": "1"})
    events.take()
    # Late or repeated outcomes change nothing and publish nothing.
    assert not await ws.update_step(store, rid, "a", "failed", error="late")
    assert not await ws.update_step(store, rid, "a", "completed", result={"x": "2"})
    assert not await ws.update_step(store, rid, "a", "skipped")
    assert not await ws.update_step(store, rid, "a", "running")
    assert events.take() == []
    step = (await ws.get_run(store, rid)).steps["a"]
    assert (step.status, step.result, step.error, step.task_id) == (
        StepStatus.COMPLETED, {"x": "1"}, "", "t")

    # Many racing outcomes for one step: exactly one wins.
    outcomes = await asyncio.gather(
        *(ws.update_step(store, rid, "b", "completed" if i % 2 else "failed", error=str(i))
          for i in range(10)))
    assert sum(outcomes) == 1
    assert len(events.take()) == 1

    with pytest.raises(ValueError, match="back to pending"):
        await ws.update_step(store, rid, "a", "pending")
    with pytest.raises(NotFound, match=f"workflow run '{rid}' has no step 'zz'"):
        await ws.update_step(store, rid, "zz", "running")
    with pytest.raises(NotFound):
        await ws.update_step(store, "run-none", "a", "running")

    # Running steps may not complete a run.
    with pytest.raises(FailedPrecondition, match="steps not completed: b, c, d"):
        await ws.finish_run(store, rid, "completed")
    assert await ws.finish_run(store, rid, RunStatus.FAILED, error="cancelled by operator")
    assert not await ws.finish_run(store, rid, RunStatus.FAILED, error="again")
    assert not await ws.finish_run(store, rid, RunStatus.COMPLETED)
    with pytest.raises(ValueError, match="completed or failed"):
        await ws.finish_run(store, rid, "running")
    done = await ws.get_run(store, rid)
    assert done.status == RunStatus.FAILED and done.error == "cancelled by operator"
    # Failing a run ends its steps that never started; a finished run starts nothing more.
    assert done.steps["c"].status == StepStatus.SKIPPED
    assert done.steps["c"].error == "skipped: the run failed"
    assert not await ws.update_step(store, rid, "d", "running")
    types = events.types()
    assert types.count("workflow_failed") == 1 and "workflow_completed" not in types
    assert types.count("workflow_step_skipped") == 2  # c and d


async def test_render_failure_fails_the_step_and_the_run(store: Store) -> None:
    await ws.create_workflow(store, "etl", "", "", DIAMOND)
    run, _ = await ws.start_run(store, "etl", "", {})  # no "name" input
    with pytest.raises(InvalidArgument) as caught:
        DIAMOND.step("a").render_payload(run.render_context())
    message = str(caught.value)
    assert message == "payload 'who': input 'name' is not set; the run's input has: (nothing)"
    assert await ws.update_step(store, run.run_id, "a", "failed", error=message)
    actions = await ws.advance_run(store, run.run_id)
    assert actions.skip == ["b", "c", "d"] and actions.run_status == RunStatus.FAILED
    done = await ws.get_run(store, run.run_id)
    assert done.status == RunStatus.FAILED and "input 'name' is not set" in done.error


async def test_fail_fast(store: Store) -> None:
    two = spec({"steps": [{"id": "a"}, {"id": "x"}, {"id": "y", "depends_on": ["x"]}]})
    await ws.create_workflow(store, "w", "", "", two)
    run, _ = await ws.start_run(store, "w", "", {})
    await ws.update_step(store, run.run_id, "x", "running")
    await ws.update_step(store, run.run_id, "a", "failed", error="e")
    actions = await ws.advance_run(store, run.run_id, fail_fast=True)
    assert actions.skip == ["y"] and actions.run_status == RunStatus.RUNNING
    assert (await ws.get_run(store, run.run_id)).steps["y"].error == "skipped: step 'a' failed"


async def test_unfinished_runs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.sqlite3"
    first = await Store.open(path)
    await ws.ensure_schema(first)
    await ws.create_workflow(first, "etl", "", "", DIAMOND)
    pending, _ = await ws.start_run(first, "etl", "p", {"name": "x"})
    running, _ = await ws.start_run(first, "etl", "r", {})
    await ws.update_step(first, running.run_id, "a", "running", task_id="task-a")
    finished, _ = await ws.start_run(first, "etl", "f", {})
    await ws.update_step(first, finished.run_id, "a", "failed")
    await ws.advance_run(first, finished.run_id)
    await first.close()

    second = await Store.open(path)
    try:
        await ws.ensure_schema(second)  # idempotent on an existing database
        resumed = await ws.unfinished_runs(second)
        assert [run.run_id for run in resumed] == [pending.run_id, running.run_id]
        assert resumed[0].input == {"name": "x"} and resumed[0].status == RunStatus.PENDING
        assert resumed[1].status == RunStatus.RUNNING
        assert resumed[1].steps["a"].status == StepStatus.RUNNING
        assert resumed[1].steps["a"].task_id == "task-a"
        assert resumed[1].step_states() == {
            "a": "running", "b": "pending", "c": "pending", "d": "pending"}
        assert (await ws.advance_run(second, pending.run_id)).ready == ["a"]
        assert (await ws.advance_run(second, running.run_id)).ready == []
        again, created = await ws.start_run(second, "etl", "r", {})
        assert not created and again.run_id == running.run_id
    finally:
        await second.close()


async def test_values_are_data_not_sql(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="is invalid"):
        await ws.create_workflow(store, "x';DROP TABLE workflows;--", "", "", DIAMOND)
    await ws.create_workflow(store, "w", "'; DROP TABLE workflows; --", "\0", DIAMOND)
    run, _ = await ws.start_run(store, "w", "'; DROP TABLE workflow_runs; --",
                                {"'": "\"", "ü": "\0"})
    again = await ws.get_run(store, run.run_id)
    assert again.input == {"'": "\"", "ü": "\0"}
    assert again.idempotency_key == "'; DROP TABLE workflow_runs; --"
    workflow = await ws.get_workflow(store, "w")
    assert (workflow.name, workflow.description) == ("'; DROP TABLE workflows; --", "\0")
