"""A task's outcome: the result map built from a finished run, and fitting it into a response.

Result map (all strings): exit_code; stdout, stderr (each the first tasks.output_limit_bytes bytes)
with stdout_truncated/stderr_truncated ("true"/"false") and stdout_bytes/stderr_bytes (the full
sizes); container_id, image, workload_class; started_at, finished_at (unix seconds), duration_ms;
timed_out, timeout_s, timeout_capped; cached ("true" when answered from the store); cancelled and
abandoned ("true", only when so). stdout and stderr are capped as UTF-8 text (what the wire
carries), and together so that the whole response stays within the server's max message size
(server.max_message_bytes less a margin); what is cut is marked truncated as above.
success is false for a non-zero exit (error "exit code N") and a timeout (error "timed out ...").

Besides (the original runner's keys where they mean the same): runner_output, the JSON of the
last stdout line `__DSPY_RESULT__: {json}` (only when there is one; found in the captured stdout,
so a marker beyond tasks.output_limit_bytes is not seen); stdout_tail and stderr_tail (the last
TAIL_CHARS characters of each, the flat form of the original's logs.stdout_tail/stderr_tail);
status ("completed" or "failed"); and, when the payload had them, workflow_id, tenant and
warnings (a JSON list of what the `execution` section asked and was not honoured or was capped);
outputs_summary (tasks/outputs.py), when the payload declared JSON output artifacts and the class
has a results_dir: at most half the response, the largest entries left out first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from agent_infra.runtime.errors import AlreadyExists

from .container import RunRecord
from .output import utf8_prefix
from .outputs import fit_summary
from .store import StoredResult
from .workloads import MIB

DEFAULT_MAX_MESSAGE_BYTES = 4 * MIB
# Kept free of output in every response: the other fields, the framing, and room to spare.
MIN_MESSAGE_MARGIN = 64 * 1024
# A protobuf map entry's framing around its key and value (tags and length varints), at most.
MAP_ENTRY_OVERHEAD = 20
RESULT_MARKER = "__DSPY_RESULT__:"
TAIL_CHARS = 4096


@dataclass(frozen=True)
class TaskOutcome:
    success: bool
    result: dict[str, str]
    error: str
    latency_ms: float  # this call's, from its arrival to its answer


@dataclass(frozen=True)
class Finished:
    success: bool
    result: dict[str, str]
    error: str
    request_key: str  # the request it is the outcome of


def output_budget(max_message_bytes: int) -> int:
    """The most a response may carry, all fields included: the max message less a margin."""
    return max_message_bytes - max(MIN_MESSAGE_MARGIN, max_message_bytes // 16)


def other_class(task_id: str, ran_as: str, asked: str) -> AlreadyExists:
    return AlreadyExists(f"task_id {task_id!r} already ran as workload_class {ran_as!r} "
                         f"(asked for {asked!r}); use a new task_id")


def other_request(task_id: str) -> AlreadyExists:
    # Nothing about the other request or its result is told.
    return AlreadyExists(f"task_id {task_id!r} is in use by a different request (another "
                         "payload, image or caller); a task id runs one request only: use a "
                         "new task_id")


def cached(stored: StoredResult) -> Finished:
    return Finished(stored.success, {**stored.result, "cached": "true"}, stored.error,
                    stored.request_key)


def fit_output(result: Mapping[str, str], error: str, budget: int) -> dict[str, str]:
    """`result` with stdout and stderr cut (and marked truncated) so that the whole response,
    as UTF-8 on the wire, is at most `budget` bytes; the two share the room left by the rest,
    either one using what the other does not need."""
    fitted = dict(result)
    streams = ("stdout", "stderr")
    if "outputs_summary" in fitted:  # at most half the response; the streams share the rest
        fitted["outputs_summary"] = fit_summary(fitted["outputs_summary"], budget // 2)
    rest = len(error.encode("utf-8", "surrogatepass")) + 64  # success, latency, framing
    for key, value in fitted.items():
        rest += MAP_ENTRY_OVERHEAD + len(key.encode()) + (
            0 if key in streams else len(value.encode("utf-8", "surrogatepass")))
    room = max(0, budget - rest)
    sizes = {key: len(fitted.get(key, "").encode("utf-8", "surrogatepass")) for key in streams}
    if sum(sizes.values()) <= room:
        return fitted
    small, large = sorted(streams, key=lambda key: sizes[key])
    caps = {small: min(sizes[small], room // 2)}
    caps[large] = room - caps[small]
    for key in streams:
        text, cut = utf8_prefix(fitted.get(key, ""), caps[key])
        if cut:
            fitted[key] = text
            fitted[f"{key}_truncated"] = "true"
    return fitted


def outcome_of(record: RunRecord) -> Finished:
    duration_ms = (record.finished_at - record.started_at) * 1000
    stdout, stdout_cut = record.stdout.render()
    stderr, stderr_cut = record.stderr.render()
    result = {
        "exit_code": str(record.exit_code),
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": flag(stdout_cut),
        "stderr_truncated": flag(stderr_cut),
        "stdout_bytes": str(record.stdout.total),
        "stderr_bytes": str(record.stderr.total),
        "container_id": record.container_id,
        "image": record.image,
        "workload_class": record.workload_class,
        "started_at": f"{record.started_at:.3f}",
        "finished_at": f"{record.finished_at:.3f}",
        "duration_ms": f"{duration_ms:.1f}",
        "timed_out": flag(record.timed_out),
        "timeout_s": f"{record.timeout:g}",
        "timeout_capped": flag(record.timeout_capped),
        "cached": "false",
        "stdout_tail": stdout[-TAIL_CHARS:],
        "stderr_tail": stderr[-TAIL_CHARS:],
        **dict(record.extras),
    }
    if record.outputs_summary is not None:
        result["outputs_summary"] = record.outputs_summary
    structured = runner_output(stdout)
    if structured is not None:
        result["runner_output"] = structured
    if record.timed_out:
        capped = " (capped at the class's max_timeout)" if record.timeout_capped else ""
        error = f"timed out after {record.timeout:g} s{capped}; the container was killed"
    elif record.exit_code != 0:
        error = f"exit code {record.exit_code}"
    else:
        error = ""
    result["status"] = "failed" if error else "completed"
    return Finished(not error, result, error, record.request_key)


def runner_output(stdout: str) -> str | None:
    """The JSON of the last `__DSPY_RESULT__: {json}` line that parses, re-encoded compactly."""
    for line in reversed(stdout.splitlines()):
        text = line.strip()
        if not text.startswith(RESULT_MARKER):
            continue
        try:
            value = json.loads(text[len(RESULT_MARKER):])
        except (ValueError, RecursionError):
            continue
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return None


def flag(value: bool) -> str:
    return "true" if value else "false"
