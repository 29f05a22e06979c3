"""What Slurm's commands say about jobs, parsed (pure: text in, values out).

States come from squeue while the job is active, then from `scontrol show job` (kept by slurmctld
for MinJobAge after the end, with no accounting database needed), then from sacct when the
cluster has accounting. Every answer is matched against the job's name: a recorded id that Slurm
has since given to another job (ids restart with a new cluster state) is not taken for ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_ID = re.compile(r"^[0-9]+$")
# squeue lists a job while it is in one of these; afterwards only scontrol/sacct know its end.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
    "SPECIAL_EXIT", "POWER_UP_NODE", "UPDATE_DB",
})
# What Slurm's client commands say when slurmctld cannot be reached (or is overloaded): nothing
# is known about the job, so the same execution is tried again later.
UNREACHABLE = (
    "unable to contact slurm controller", "socket timed out", "connection refused",
    "temporarily unable to accept job", "transport endpoint is not connected",
    "zero bytes were transmitted", "slurm_persist_conn", "communication connection failure",
)
UNKNOWN_JOB = "invalid job id specified"
NO_ACCOUNTING = "accounting storage is disabled"


@dataclass(frozen=True)
class JobEnd:
    """What Slurm says about a finished job."""

    state: str
    exit_code: int | None
    signal: int | None
    reason: str
    run_seconds: float | None


def is_unreachable(message: str) -> bool:
    """Whether a command's error says the controller could not be reached."""
    lowered = message.lower()
    return any(marker in lowered for marker in UNREACHABLE)


def is_unknown_job(message: str) -> bool:
    return UNKNOWN_JOB in message.lower()


def sbatch_job_id(out: str) -> str:
    """The job id `sbatch --parsable` printed ("ID" or "ID;CLUSTER"), or '' if it is not one."""
    job_id = out.strip().split(";")[0]
    return job_id if JOB_ID.fullmatch(job_id) else ""


def job_ids(out: str) -> list[str]:
    """The ids `squeue --format=%i --noheader` listed."""
    return [line.strip() for line in out.splitlines() if JOB_ID.fullmatch(line.strip())]


def squeue_state(out: str, name: str) -> tuple[str, str]:
    """From `squeue --format=%T|%j|%r`: the active state of the job named `name`, else '', and
    Slurm's reason for it (why it is pending)."""
    for line in out.splitlines():
        state, _, rest = line.strip().partition("|")
        listed_name, _, reason = rest.partition("|")
        if listed_name == name and state in ACTIVE_STATES:
            return state, reason.strip()
    return "", ""


def parse_scontrol_job(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs (values without spaces)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def scontrol_end(out: str, name: str) -> JobEnd | None:
    """The job's state from `scontrol show job -o`, if it is the job named `name`."""
    fields = parse_scontrol_job(out)
    if not (fields.get("JobState") and fields.get("JobName") == name):
        return None
    code, signal = parse_exit_code(fields.get("ExitCode", ""))
    return JobEnd(fields["JobState"], code, signal, fields.get("Reason", ""),
                  parse_run_time(fields.get("RunTime", "")))


def sacct_end(out: str, name: str) -> JobEnd | None:
    """From `sacct --parsable2 --format=JobName%200,State,ExitCode,ElapsedRaw`: the end of the
    job named `name`, if listed."""
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0] == name and parts[1]:
            code, signal = parse_exit_code(parts[2])
            elapsed = float(parts[3]) if parts[3].isdigit() else None
            # sacct says "CANCELLED by 0": the state is the first word.
            return JobEnd(parts[1].split()[0], code, signal, "", elapsed)
    return None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's "CODE:SIGNAL"."""
    code, _, signal = text.partition(":")
    return (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)


def parse_run_time(text: str) -> float | None:
    """[D-]HH:MM:SS, MM:SS, or SS."""
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and
                                                                          not days.isdigit()):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400.0
