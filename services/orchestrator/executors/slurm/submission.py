"""What is handed to sbatch for one execution (pure: no I/O): the job's name, its batch script
and the command line.

The job runs with `--export=NONE` (the orchestrator's environment, secrets included, stays out of
it; Slurm sets up the user's own login environment) and `--no-requeue` (Slurm must not run a
command a second time by itself). Timeouts are enforced in seconds inside the job (coreutils
`timeout`), with Slurm's `--time` in whole minutes one minute later as the backstop. The script
writes an exit record when the command ends, whole or not at all.
"""

from __future__ import annotations

import math
import re
import shlex

from ...settings import SlurmSettings
from .job_files import JobFiles
from .payload import SLURM_CLASS, JobSpec

# How long the command may take to die after `timeout` sent TERM, before KILL.
KILL_AFTER_S = 10


def job_name(execution_id: str, key: str) -> str:
    """Readable in squeue, safe anywhere: the id's harmless characters, then the hash (unique)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", execution_id)[:48]
    return f"agent-infra-{readable}-{key[:16]}"


def time_limit_minutes(timeout_seconds: int) -> int:
    # Slurm counts whole minutes; one more than the job's own timeout leaves it room to stop
    # the command itself and write its exit record first.
    return math.ceil(max(timeout_seconds, 1) / 60) + 1


def render_script(spec: JobSpec, files: JobFiles, timeout_seconds: int) -> str:
    """The batch script: every value from the payload is quoted by shlex, never interpolated."""
    q = shlex.quote
    argv = list(spec.command) if isinstance(spec.command, tuple) else ["/bin/sh", "-c",
                                                                        spec.command]
    timeout = max(timeout_seconds, 1)
    lines = [
        "#!/bin/sh",
        f"# agent-infra {SLURM_CLASS} execution {files.key}: written by the orchestrator.",
        # What the job writes (its exit record, files the command makes) is its user's alone.
        "umask 077",
        "started=$(date +%s.%N)",
        *(f"export {name}={q(value)}" for name, value in spec.env),
        # A subshell, so a failing cd still reaches the exit record below.
        "(",
        *([f"  cd {q(spec.workdir)} || exit 1"] if spec.workdir else []),
        f"  exec timeout -k {KILL_AFTER_S} {timeout} {shlex.join(argv)} "
        f"<{q(str(files.stdin)) if spec.stdin is not None else '/dev/null'}",
        ")",
        "rc=$?",
        "ended=$(date +%s.%N)",
        "timed_out=false",
        # timeout's own codes only count when the time was really up (the command may use them).
        'if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then',
        f'  if [ $(( ${{ended%.*}} - ${{started%.*}} )) -ge {timeout} ]; then timed_out=true; fi',
        "fi",
        # Written whole or not at all: a reader never sees half a record.
        f'printf \'%s %s %s %s %s\\n\' "$rc" "$started" "$ended" "$timed_out" "$SLURM_JOB_ID" '
        f">{q(str(files.exit_record))}.tmp && mv -f {q(str(files.exit_record))}.tmp "
        f"{q(str(files.exit_record))}",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def sbatch_argv(settings: SlurmSettings, name: str, spec: JobSpec, files: JobFiles,
                timeout_seconds: int) -> list[str]:
    """The sbatch command line that submits the job (its script already written)."""
    argv = [settings.sbatch, "--parsable", f"--job-name={name}",
            f"--output={files.stdout}", f"--error={files.stderr}",
            f"--time={time_limit_minutes(timeout_seconds)}",
            f"--chdir={files.work_dir}", "--export=NONE", "--no-requeue",
            "--open-mode=truncate"]
    if settings.partition:
        argv.append(f"--partition={settings.partition}")
    if spec.gpus:
        argv.append(f"--gres=gpu:{spec.gpus}")
    return [*argv, *settings.sbatch_args, str(files.script)]
