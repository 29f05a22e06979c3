"""A Slurm job's record as GET /slurm/status/{task_id} returns it (pure: text in, dict out).

Fields: job_id, job_name, state (Slurm's JobState, e.g. PENDING, RUNNING, COMPLETED, FAILED,
CANCELLED, TIMEOUT), reason (why it is pending or ended so, '' for none), exit_code and signal
(ints, None while unknown), partition, node (the node list, '' before it starts),
submit_time, start_time, end_time (unix seconds, None while unknown), run_seconds, and source:
"scontrol" while slurmctld still knows the job, "exit_record" once it has forgotten it (the
job's own record of its command's end then tells exit code and times).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .job_files import ExitRecord
from .job_state import parse_exit_code, parse_run_time

# scontrol's words for "no time yet".
_NO_TIME = frozenset({"", "Unknown", "None", "N/A", "(null)"})


def job_record(job_id: str, name: str, fields: dict[str, str],
               exit_record: ExitRecord | None) -> dict[str, Any]:
    """The record from `scontrol show job -o` fields (empty when Slurm has forgotten the job or
    did not answer) and the job's exit record (None until its command ended)."""
    code, signal = parse_exit_code(fields.get("ExitCode", ""))
    reason = fields.get("Reason", "")
    record: dict[str, Any] = {
        "job_id": job_id,
        "job_name": name,
        "state": fields.get("JobState", ""),
        "reason": "" if reason in _NO_TIME else reason,
        "exit_code": code,
        "signal": signal,
        "partition": fields.get("Partition", ""),
        "node": "" if fields.get("NodeList", "") in _NO_TIME else fields["NodeList"],
        "submit_time": _timestamp(fields.get("SubmitTime", "")),
        "start_time": _timestamp(fields.get("StartTime", "")),
        "end_time": _timestamp(fields.get("EndTime", "")),
        "run_seconds": parse_run_time(fields.get("RunTime", "")),
        "source": "scontrol" if fields else "exit_record",
    }
    if record["state"] in ("PENDING",):
        # scontrol shows the expected start and end of a pending job: not times it had.
        record["start_time"] = record["end_time"] = None
    if exit_record is not None:
        # The script's own record is exact (Slurm's ExitCode is the batch step's).
        record["exit_code"] = exit_record.exit_code
        record["start_time"] = record["start_time"] or exit_record.started
        record["end_time"] = record["end_time"] or exit_record.ended
        if record["run_seconds"] is None:
            record["run_seconds"] = round(exit_record.ended - exit_record.started, 3)
        if not record["state"]:
            record["state"] = "COMPLETED" if exit_record.exit_code == 0 else "FAILED"
    return record


def _timestamp(text: str) -> float | None:
    """scontrol's local "YYYY-MM-DDTHH:MM:SS" as unix seconds."""
    if text in _NO_TIME:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
