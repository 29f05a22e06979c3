"""`outputs_summary`: the JSON output artifacts a task declared, read back after its exit.

A payload's `artifacts.outputs` (tasks/modes.py, agent_infra.runtime.artifacts) names files under
the class's `results_dir`; once the container has exited, and before it is removed, each JSON one
is copied out of it through the engine's archive API (docker/archive.py: no host mount). The
result's `outputs_summary` is the JSON text of {file name: its parsed JSON}; a file that cannot be
used is an entry {"error": "..."} instead (missing, not a regular file, over MAX_FILE_BYTES, not
valid JSON, or left out to keep the result within MAX_SUMMARY_BYTES or the response limit).
Nothing here fails the task.
"""

from __future__ import annotations

import json
from typing import Any

from agent_infra.runtime.logs import get_logger

from ..docker.archive import read_file
from ..docker.engine import DockerEngine
from .workloads import MIB

log = get_logger("tasks")

MAX_FILE_BYTES = MIB
MAX_SUMMARY_BYTES = 2 * MIB


async def collect(engine: DockerEngine, container_id: str,
                  outputs: tuple[tuple[str, str], ...]) -> str | None:
    """The outputs_summary text for the declared (file name, container path) outputs; None
    when there are none."""
    if not outputs:
        return None
    summary: dict[str, Any] = {}
    for name, path in outputs:
        try:
            read = await read_file(engine, container_id, path, MAX_FILE_BYTES)
        except Exception as exc:  # the engine failing here must not fail the task
            log.warning("task_output_not_read", container_id=container_id, path=path,
                        error=str(exc))
            summary[name] = {"error": f"could not be read: {str(exc)[:300]}"}
            continue
        if read.data is None:
            summary[name] = {"error": read.problem}
            continue
        try:
            summary[name] = json.loads(read.data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            summary[name] = {"error": f"not valid JSON: {str(exc)[:200]}"}
    return fit_summary(json.dumps(summary, ensure_ascii=False, separators=(",", ":")),
                       MAX_SUMMARY_BYTES)


def size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def fit_summary(text: str, limit: int) -> str:
    """`text` (an outputs_summary) at most `limit` bytes as UTF-8: the largest entries are
    replaced by an error entry saying they were left out until it fits."""
    if size(text) <= limit:
        return text
    try:
        summary = json.loads(text)
    except (ValueError, RecursionError):
        summary = None
    if not isinstance(summary, dict):
        return "{}"
    sizes = {name: size(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
             for name, value in summary.items()}
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        summary[name] = {"error": f"left out: its JSON is {sizes[name]} bytes, more than the "
                                  "result has room for"}
        text = json.dumps(summary, ensure_ascii=False, separators=(",", ":"))
        if size(text) <= limit:
            return text
    return "{}"
