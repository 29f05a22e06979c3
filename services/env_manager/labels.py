"""Container labels that mark what env-manager owns, so a restarted daemon finds its containers."""

from __future__ import annotations

PREFIX = "org.agent-infra"
STACK = f"{PREFIX}.stack"
SERVICE = f"{PREFIX}.service"
CONFIG_HASH = f"{PREFIX}.config-hash"
KIND = f"{PREFIX}.kind"  # "service", "task" or "warm"
TASK_ID = f"{PREFIX}.task-id"
WORKLOAD_CLASS = f"{PREFIX}.workload-class"

KIND_SERVICE = "service"
KIND_TASK = "task"
# A warm container (tasks/warm.py): no task's until claimed; unclaimed, it is garbage.
KIND_WARM = "warm"


def label_filter(**labels: str) -> dict[str, list[str]]:
    """A Docker `filters` value matching every given label=value (keys as the constants above)."""
    return {"label": [f"{key}={value}" for key, value in labels.items()]}
