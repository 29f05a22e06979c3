"""Task.snapshot copies every field, so a listener's view never misses one."""

from __future__ import annotations

import dataclasses

from agent_infra.orchestrator.model import Task, TaskState


def test_snapshot_copies_every_field_and_is_a_separate_object() -> None:
    values: dict[str, object] = {}
    for number, spec in enumerate(dataclasses.fields(Task)):
        # A value unlike every default, of the field's type.
        if spec.type == "str":
            values[spec.name] = f"value-{number}"
        elif spec.type == "int":
            values[spec.name] = 1000 + number
        elif spec.type == "float":
            values[spec.name] = 1000.5 + number
        elif spec.type == "TaskState":
            values[spec.name] = TaskState.RUNNING
        else:
            values[spec.name] = {"key": f"value-{number}"}
    task = Task(**values)  # type: ignore[arg-type]
    copy = task.snapshot()
    assert copy is not task
    assert dataclasses.asdict(copy) == dataclasses.asdict(task) == {
        name: value for name, value in values.items()}
    task.status = TaskState.COMPLETED
    assert copy.status is TaskState.RUNNING
