"""How a Slurm job's end becomes its task's outcome (pure: values in, values out).

Result map (all strings): job_id, state (Slurm's job state), exit_code, signal, stdout, stderr
(each the first output_limit_bytes) with stdout_truncated/stderr_truncated and
stdout_bytes/stderr_bytes, duration_ms, timed_out, timeout_s; never_started ("true") when it was
cancelled for staying pending. success is true only for COMPLETED with exit code 0.

Time spent queued is bounded: a job still PENDING `slurm.pending_timeout` after sbatch (by
default the task's own timeout, but at least PENDING_FLOOR_S: even an idle cluster takes seconds
to start a job) is cancelled, and its task fails as never started.
"""

from __future__ import annotations

from ..protocol import ExecutionOutcome
from .job_files import Captured, ExitRecord
from .job_state import JobEnd

# Without slurm.pending_timeout, a job may stay PENDING for its task's timeout, but never less
# than this: slurmctld schedules in passes, and a loaded controller took over 2 s to start a job
# on an idle test cluster.
PENDING_FLOOR_S = 60.0


def job_outcome(job_id: str, end: JobEnd | None, record: ExitRecord | None, stdout: Captured,
                stderr: Captured, timeout_seconds: int) -> ExecutionOutcome:
    """The outcome from what Slurm says (`end`, None when it has forgotten the job) and what the
    job left behind (its exit record, None when the command never ended, and its output)."""
    if end is not None:
        state = end.state
    elif record is not None:
        state = "COMPLETED" if record.exit_code == 0 else "FAILED"
    else:
        state = "UNKNOWN"
    # The script's own record is exact; Slurm's ExitCode is the fallback (e.g. when killed).
    exit_code = record.exit_code if record is not None else (end.exit_code if end else None)
    signal = end.signal if end is not None and record is None else 0
    if record is not None:
        duration = (record.ended - record.started) * 1000
    elif end is not None and end.run_seconds is not None:
        duration = end.run_seconds * 1000
    else:
        duration = 0.0
    timed_out = (record is not None and record.timed_out) or state == "TIMEOUT"
    result = {
        "job_id": job_id,
        "state": state,
        "exit_code": "" if exit_code is None else str(exit_code),
        "signal": "" if not signal else str(signal),
        "stdout": stdout.text,
        "stderr": stderr.text,
        "stdout_truncated": _flag(stdout.truncated),
        "stderr_truncated": _flag(stderr.truncated),
        "stdout_bytes": str(stdout.size),
        "stderr_bytes": str(stderr.size),
        "duration_ms": f"{duration:.1f}",
        "timed_out": _flag(timed_out),
        "timeout_s": str(timeout_seconds),
    }
    error = _error(job_id, state, exit_code, signal, timed_out, timeout_seconds,
                   end.reason if end else "")
    return ExecutionOutcome(not error, result, error)


def as_never_started(outcome: ExecutionOutcome, error: str) -> ExecutionOutcome:
    """The outcome of a job cancelled while still pending: its command never ran."""
    return ExecutionOutcome(False, {**outcome.result, "never_started": "true"}, error)


def pending_limit(configured: float, timeout_seconds: int) -> float:
    """How long a job may stay PENDING: slurm.pending_timeout, else the task's timeout, but at
    least PENDING_FLOOR_S."""
    return configured or max(timeout_seconds, PENDING_FLOOR_S)


def never_started_error(job_id: str, reason: str, waited: float, configured: float,
                        timeout_seconds: int) -> str:
    """The task's error once its job was cancelled for staying pending too long."""
    limit = pending_limit(configured, timeout_seconds)
    if configured:
        limit_text = f"slurm.pending_timeout {limit:g} s"
    elif timeout_seconds >= PENDING_FLOOR_S:
        limit_text = f"the task's timeout of {limit:g} s"
    else:
        limit_text = f"{limit:g} s, the least a job may wait to start"
    return (f"never started: Slurm job {job_id} was still PENDING{_why(reason)} after "
            f"{waited:.0f} s ({limit_text}); it was cancelled")


def _error(job_id: str, state: str, exit_code: int | None, signal: int | None, timed_out: bool,
           timeout_seconds: int, reason: str) -> str:
    job = f"Slurm job {job_id}"
    why = _why(reason)
    if timed_out:
        return f"timed out after {timeout_seconds} s; {job} stopped the command ({state})"
    if state == "COMPLETED" and exit_code == 0:
        return ""
    if state == "CANCELLED":
        return f"{job} was cancelled{why}"
    if state in ("COMPLETED", "FAILED") and exit_code:
        return f"exit code {exit_code} ({job})"
    if signal:
        return f"{job} ended {state}, killed by signal {signal}{why}"
    if state == "UNKNOWN":
        return (f"{job} ended, but Slurm no longer knows it and it left no exit record "
                "(cancelled, timed out or lost with its node)")
    return f"{job} ended {state}{why}"


def _why(reason: str) -> str:
    """Slurm's reason for a state, as a parenthesis ('' when it gives none)."""
    return f" ({reason})" if reason and reason != "None" else ""


def _flag(value: bool) -> str:
    return "true" if value else "false"
