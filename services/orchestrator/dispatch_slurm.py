"""Dispatch of gpu_slurm tasks to a Slurm cluster: sbatch, then squeue/scontrol polling.

One execution is one batch job, submitted at most once. Its files live in the work dir under a
hash of the execution id (the id itself never names a file, a job or reaches a shell): the job
script, its stdout/stderr, the job id recorded after sbatch answered, and an exit record the
script writes when the command ends. A re-dispatch of the same execution (a transient failure,
an orchestrator restart) attaches to the job instead of submitting a second one: first through
the recorded job id, then, if the orchestrator died between sbatch and that record, through
`squeue --name` (the job name carries the hash).

Payload keys (all optional but command; any other key is refused as INVALID_ARGUMENT):

  command  a JSON array of strings, run as that argv; or any other text, run by `/bin/sh -c`
  env      a JSON object of strings, exported to the command
  stdin    text given to the command on its standard input
  workdir  an absolute path on the compute node to run in
  gpus     a whole number of GPUs to ask for (`--gres=gpu:N`)

The job runs with `--export=NONE` (the orchestrator's environment, secrets included, stays out
of it; Slurm sets up the user's own login environment) and `--no-requeue` (Slurm must not run a
command a second time by itself). Timeouts are enforced in seconds inside the job (coreutils
`timeout`), with Slurm's `--time` in whole minutes one minute later as the backstop. Time spent
queued is bounded too: a job still PENDING `slurm.pending_timeout` after sbatch (by default the
task's own timeout, but at least PENDING_FLOOR_S: even an idle cluster takes seconds to start a
job) is cancelled (only while still pending, so a job that has just started runs on) and its
task fails as never started.

States come from squeue while the job is active, then from `scontrol show job` (kept by slurmctld
for MinJobAge after the end, with no accounting database needed), then from sacct when the
cluster has accounting, and at last from the job's own exit record.

Result map (all strings): job_id, state (Slurm's job state), exit_code, signal, stdout, stderr
(each the first output_limit_bytes) with stdout_truncated/stderr_truncated and
stdout_bytes/stderr_bytes, duration_ms, timed_out, timeout_s; never_started ("true") when it was
cancelled for staying pending. success is true only for COMPLETED with exit code 0.

The settings can change while the executor runs (`reconfigure`, on SIGHUP): each command and
poll reads the current ones, so new jobs take a new partition or sbatch_args and the jobs being
followed carry on under the new poll interval, command paths and limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument
from agent_infra.runtime.logs import get_logger

from .executor import Execution, ExecutionOutcome, TransientFailure
from .settings import SlurmSettings

log = get_logger("dispatch_slurm")
# Without slurm.pending_timeout, a job may stay PENDING for its task's timeout, but never less
# than this: slurmctld schedules in passes, and a loaded controller took over 2 s to start a job
# on an idle test cluster.
PENDING_FLOOR_S = 60.0

SLURM_CLASS = "gpu_slurm"
PAYLOAD_KEYS = ("command", "env", "stdin", "workdir", "gpus")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_ID = re.compile(r"^[0-9]+$")
MAX_GPUS = 64

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
# How long the command may take to die after `timeout` sent TERM, before KILL.
KILL_AFTER_S = 10
PRUNE_EVERY_S = 3600.0
JOB_FILE = re.compile(r"^[0-9a-f]{32}\.(sh|in|out|err|exit|job)(\.tmp)?$")


class SlurmCommandFailed(Exception):
    """A Slurm command exited non-zero for a reason other than an unreachable controller."""


@dataclass(frozen=True)
class JobSpec:
    command: tuple[str, ...] | str  # an argv, or text for /bin/sh -c
    env: tuple[tuple[str, str], ...]
    stdin: str | None
    workdir: str | None
    gpus: int


def parse_payload(payload: Mapping[str, str]) -> JobSpec:
    """The job a payload asks for, or InvalidArgument naming the key at fault."""
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    if unknown:
        raise InvalidArgument(f"payload has unknown key(s) {', '.join(map(repr, unknown))} for "
                              f"{SLURM_CLASS}; allowed keys: {', '.join(PAYLOAD_KEYS)}")
    command = _command(payload.get("command", ""))
    env: list[tuple[str, str]] = []
    if text := payload.get("env", "").strip():
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"payload.env is not JSON: {exc}") from None
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise InvalidArgument('payload.env must be a JSON object of strings, {"NAME": "value"}')
        for name, value in decoded.items():
            if not ENV_NAME.fullmatch(name):
                raise InvalidArgument(f"payload.env name {name!r:.80} is not a valid variable name")
            if "\0" in value:
                raise InvalidArgument(f"payload.env.{name} contains a NUL character")
            env.append((name, value))
    workdir = payload.get("workdir") or None
    if workdir is not None and (not workdir.startswith("/") or "\0" in workdir):
        raise InvalidArgument(f"payload.workdir must be an absolute path; got {workdir!r:.200}")
    gpus_text = payload.get("gpus", "").strip()
    if gpus_text and not (gpus_text.isdigit() and int(gpus_text) <= MAX_GPUS):
        raise InvalidArgument(f"payload.gpus must be a whole number from 0 to {MAX_GPUS}; "
                              f"got {gpus_text!r:.40}")
    stdin = payload.get("stdin")
    return JobSpec(command, tuple(env), stdin if stdin else None, workdir,
                   int(gpus_text) if gpus_text else 0)


def _command(text: str) -> tuple[str, ...] | str:
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument(f"payload.command is required for {SLURM_CLASS} (a JSON array of "
                              "strings, or text run by /bin/sh -c)")
    if stripped.startswith(("[", '"')):
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            decoded = None  # not JSON after all: shell text that starts with [ or "
        if isinstance(decoded, list):
            if not decoded or not all(isinstance(a, str) and "\0" not in a for a in decoded):
                raise InvalidArgument("payload.command as a JSON array needs one or more strings")
            return tuple(decoded)
        if isinstance(decoded, str):
            stripped = decoded
    if "\0" in stripped:
        raise InvalidArgument("payload.command contains a NUL character")
    return stripped


@dataclass(frozen=True)
class JobFiles:
    """Where one execution's files are: named by a hash, so any id makes a safe file name."""

    work_dir: Path
    key: str

    @classmethod
    def of(cls, work_dir: Path, execution_id: str) -> JobFiles:
        # The work dir is hashed in too: two orchestrators sharing a cluster (and a user) with
        # the same task ids must never find, and attach to, each other's jobs by name.
        digest = hashlib.sha256(f"{work_dir}\0{execution_id}".encode()).hexdigest()
        return cls(work_dir, digest[:32])

    def path(self, suffix: str) -> Path:
        return self.work_dir / f"{self.key}{suffix}"

    @property
    def script(self) -> Path:
        return self.path(".sh")

    @property
    def stdin(self) -> Path:
        return self.path(".in")

    @property
    def stdout(self) -> Path:
        return self.path(".out")

    @property
    def stderr(self) -> Path:
        return self.path(".err")

    @property
    def exit_record(self) -> Path:
        return self.path(".exit")

    @property
    def job_record(self) -> Path:
        return self.path(".job")


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


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int
    started: float
    ended: float
    timed_out: bool
    job_id: str


def read_exit_record(path: Path) -> ExitRecord | None:
    try:
        fields = path.read_text().split()
    except FileNotFoundError:
        return None
    try:
        code, started, ended, timed_out = int(fields[0]), float(fields[1]), float(fields[2]), \
            fields[3] == "true"
    except (IndexError, ValueError):
        return None
    return ExitRecord(code, started, ended, timed_out, fields[4] if len(fields) > 4 else "")


@dataclass(frozen=True)
class JobEnd:
    """What Slurm says about a finished job."""

    state: str
    exit_code: int | None
    signal: int | None
    reason: str
    run_seconds: float | None


def parse_scontrol_job(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints one line of Key=Value pairs (values without spaces)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


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


@dataclass(frozen=True)
class Captured:
    text: str
    truncated: bool
    size: int


def read_capped(path: Path, limit: int) -> Captured:
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            data = stream.read(limit)
    except FileNotFoundError:
        return Captured("", False, 0)  # the job never started (cancelled while pending)
    return Captured(data.decode(errors="replace"), size > limit, size)


def _flag(value: bool) -> str:
    return "true" if value else "false"


class SlurmExecutor:
    def __init__(self, settings: SlurmSettings, work_dir: Path) -> None:
        # Every use reads self._settings anew: `reconfigure` swaps it while jobs are followed.
        self._settings = settings
        self._work_dir = work_dir.absolute()  # sbatch resolves relative paths elsewhere
        self._uid = str(os.getuid())
        self._reachable = asyncio.Event()
        self._reachable.set()
        self._sacct_works: bool | None = None  # learned on first use
        self._last_prune = 0.0

    # -- the Executor protocol -------------------------------------------------------------

    def supports(self, task_class: str) -> str:
        if task_class == SLURM_CLASS:
            return ""
        return f"the Slurm executor runs only {SLURM_CLASS} tasks, not {task_class!r:.40}"

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        if reason := self.supports(execution.task_class):
            raise FailedPrecondition(reason)
        spec = parse_payload(execution.payload)
        files = JobFiles.of(self._work_dir, execution.execution_id)
        await asyncio.to_thread(self._prepare_dir)
        try:
            # A down controller makes every other command hang for its retries (~10-20 s):
            # `scontrol ping` says so at once.
            if (state := await self._ping()) != "SERVING":
                raise TransientFailure(f"Slurm controller: {state}")
            self._reachable.set()
            submitted = await self._find_or_submit(execution, spec, files)
            if isinstance(submitted, ExecutionOutcome):
                return submitted
            return await self._follow(submitted, job_name(execution.execution_id, files.key),
                                      execution, files)
        except TransientFailure:
            self._reachable.clear()
            raise

    async def cancel(self, execution_id: str, task_class: str) -> None:
        """scancel the execution's job (best effort: a failure is logged, not raised)."""
        if self.supports(task_class):
            return
        name = job_name(execution_id, JobFiles.of(self._work_dir, execution_id).key)
        try:
            # By name, not by recorded id: a job whose sbatch answer was never written down is
            # found too. Only our user's jobs: as root, scancel could reach anyone's.
            await self._run([self._settings.scancel, f"--name={name}", f"--user={self._uid}"])
        except (TransientFailure, SlurmCommandFailed) as exc:
            log.warning("slurm_cancel_failed", execution_id=execution_id, error=str(exc))
            return
        log.info("slurm_cancelled", execution_id=execution_id)

    async def wait_until_available(self, task_class: str) -> None:
        """While the controller is unreachable, hold gpu_slurm dispatching and re-check."""
        while not self._reachable.is_set():
            if await self._ping() == "SERVING":
                self._reachable.set()
                log.info("slurm_back")
                return
            try:
                await asyncio.wait_for(self._reachable.wait(), self._settings.poll_interval)
            except TimeoutError:
                continue

    async def health(self) -> dict[str, str]:
        return {"slurm": await self._ping()}

    @property
    def settings(self) -> SlurmSettings:
        return self._settings

    def reconfigure(self, settings: SlurmSettings) -> None:
        """Use new settings from now on: for new submissions, and for the jobs in flight at
        their next poll. The work dir stays the one given at start (jobs in flight live there)."""
        self._settings = settings

    async def close(self) -> None:
        return None

    # -- submitting ------------------------------------------------------------------------

    async def _find_or_submit(self, execution: Execution, spec: JobSpec,
                              files: JobFiles) -> str | ExecutionOutcome:
        """The job id of this execution's job: the one already submitted, else a new one."""
        recorded = await asyncio.to_thread(_read_job_record, files.job_record)
        if recorded:
            log.info("slurm_attach", execution_id=execution.execution_id, job_id=recorded,
                     found_by="record")
            return recorded
        name = job_name(execution.execution_id, files.key)
        found = await self._jobs_named(name)
        if found:
            # Submitted by an orchestrator that died before recording it: attach, never resubmit.
            job_id = max(found, key=int)
            await asyncio.to_thread(_write_atomic, files.job_record, job_id + "\n")
            log.info("slurm_attach", execution_id=execution.execution_id, job_id=job_id,
                     found_by="name")
            return job_id
        finished = await asyncio.to_thread(read_exit_record, files.exit_record)
        if finished is not None and finished.job_id:
            # Ran to its end so long ago that Slurm has forgotten it; its record remains.
            return finished.job_id
        await asyncio.to_thread(self._write_job_files, spec, files, execution.timeout_seconds)
        argv = [self._settings.sbatch, "--parsable", f"--job-name={name}",
                f"--output={files.stdout}", f"--error={files.stderr}",
                f"--time={time_limit_minutes(execution.timeout_seconds)}",
                f"--chdir={self._work_dir}", "--export=NONE", "--no-requeue",
                "--open-mode=truncate"]
        if self._settings.partition:
            argv.append(f"--partition={self._settings.partition}")
        if spec.gpus:
            argv.append(f"--gres=gpu:{spec.gpus}")
        argv += [*self._settings.sbatch_args, str(files.script)]
        try:
            out = await self._run(argv)
        except SlurmCommandFailed as exc:
            # Slurm refused the job as asked (no such partition, no GPUs, over a limit...).
            return ExecutionOutcome(False, {"state": "REFUSED"},
                                    f"sbatch refused the job: {exc}")
        job_id = out.strip().split(";")[0]
        if not JOB_ID.fullmatch(job_id):
            raise TransientFailure(f"sbatch answered {out.strip()!r:.200}, not a job id")
        await asyncio.to_thread(_write_atomic, files.job_record, job_id + "\n")
        log.info("slurm_submitted", execution_id=execution.execution_id, job_id=job_id)
        return job_id

    async def _jobs_named(self, name: str) -> list[str]:
        out = await self._run([self._settings.squeue, "--noheader", "--all", "--states=all",
                               f"--user={self._uid}", f"--name={name}", "--format=%i"])
        return [line.strip() for line in out.splitlines() if JOB_ID.fullmatch(line.strip())]

    def _prepare_dir(self) -> None:
        # Outputs may hold secrets from the payload's env: only the orchestrator's user reads them.
        self._work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = time.time()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            self._prune(now)

    def _prune(self, now: float) -> None:
        for path in self._work_dir.iterdir():
            if not JOB_FILE.fullmatch(path.name):
                continue  # not ours: left alone
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > self._settings.retention:
                    path.unlink()

    def _write_job_files(self, spec: JobSpec, files: JobFiles, timeout_seconds: int) -> None:
        if spec.stdin is not None:
            _write_atomic(files.stdin, spec.stdin, mode=0o600)
        # A stale exit record (from a run Slurm never got) must not be read as this job's end.
        files.exit_record.unlink(missing_ok=True)
        _write_atomic(files.script, render_script(spec, files, timeout_seconds), mode=0o700)

    # -- following -------------------------------------------------------------------------

    async def _follow(self, job_id: str, name: str, execution: Execution, files: JobFiles
                      ) -> ExecutionOutcome:
        """Poll until the job ends. Every answer is checked against the job's name: a recorded
        id that Slurm has since given to another job (ids restart with a new cluster state)
        must not be taken for ours."""
        outage_since: float | None = None
        # When sbatch answered (the job record is written right then): what PENDING counts from,
        # across re-dispatches and orchestrator restarts.
        submitted = await asyncio.to_thread(_written_at, files.job_record)
        started = False
        never_started = ""  # the task's error, once the job was cancelled for staying pending
        while True:
            try:
                state, reason = await self._active_state(job_id, name)
                end = None if state else await self._job_end(job_id, name)
            except TransientFailure as exc:
                # The job runs on without the controller; keep following it for a while.
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning("slurm_unreachable_while_following", job_id=job_id,
                                error=str(exc))
                elif now - outage_since >= self._settings.outage_grace:
                    raise TransientFailure(
                        f"{exc} (for {now - outage_since:.0f} s while following job {job_id}; "
                        "the job is left running and re-attached on the next attempt)") from None
                await asyncio.sleep(self._settings.poll_interval)
                continue
            outage_since = None
            # (squeue and scontrol may cross as the job ends: scontrol saying active wins.)
            if state or (end is not None and end.state in ACTIVE_STATES):
                if (state or (end.state if end else "")) != "PENDING":
                    started = True
                elif not started and not never_started:
                    never_started = await self._expire_pending(
                        job_id, name, reason or (end.reason if end else ""), submitted,
                        execution)
                await asyncio.sleep(self._settings.poll_interval)
                continue
            # Ended; `end` is None when Slurm has forgotten the job: the exit record tells.
            outcome = await asyncio.to_thread(self._outcome, job_id, end, execution, files)
            # Cancelled by us and its command never ran (no exit record): it never started.
            if (never_started and not started
                    and outcome.result.get("state") in ("CANCELLED", "UNKNOWN")
                    and not await asyncio.to_thread(files.exit_record.exists)):
                return ExecutionOutcome(False, {**outcome.result, "never_started": "true"},
                                        never_started)
            return outcome

    async def _expire_pending(self, job_id: str, name: str, reason: str, submitted: float,
                              execution: Execution) -> str:
        """'' while the job may wait on; past its pending limit, scancel it (only if it is still
        pending: one that has just started runs on) and return the task's error."""
        configured = self._settings.pending_timeout
        limit = configured or max(execution.timeout_seconds, PENDING_FLOOR_S)
        waited = time.time() - submitted
        if waited < limit:
            return ""
        try:
            await self._run([self._settings.scancel, f"--name={name}", f"--user={self._uid}",
                             "--state=PENDING"])
        except (TransientFailure, SlurmCommandFailed) as exc:
            log.warning("slurm_pending_cancel_failed", execution_id=execution.execution_id,
                        job_id=job_id, error=str(exc))
            return ""  # asked again at the next poll
        why = f" ({reason})" if reason and reason != "None" else ""
        if configured:
            limit_text = f"slurm.pending_timeout {limit:g} s"
        elif execution.timeout_seconds >= PENDING_FLOOR_S:
            limit_text = f"the task's timeout of {limit:g} s"
        else:
            limit_text = f"{limit:g} s, the least a job may wait to start"
        log.warning("slurm_never_started", execution_id=execution.execution_id, job_id=job_id,
                    waited_s=round(waited, 1), reason=reason)
        return (f"never started: Slurm job {job_id} was still PENDING{why} after {waited:.0f} s "
                f"({limit_text}); it was cancelled")

    async def _active_state(self, job_id: str, name: str) -> tuple[str, str]:
        """The job's state while squeue lists it (pending, running, completing), else '', and
        Slurm's reason for it (why it is pending)."""
        try:
            out = await self._run([self._settings.squeue, f"--jobs={job_id}", "--noheader",
                                   "--format=%T|%j|%r"])
        except SlurmCommandFailed as exc:
            if UNKNOWN_JOB in str(exc).lower():
                return "", ""
            raise TransientFailure(f"squeue: {exc}") from None
        for line in out.splitlines():
            state, _, rest = line.strip().partition("|")
            listed_name, _, reason = rest.partition("|")
            if listed_name == name and state in ACTIVE_STATES:
                return state, reason.strip()
        return "", ""

    async def _job_end(self, job_id: str, name: str) -> JobEnd | None:
        """How the job ended, from scontrol, else sacct; None when neither knows it any more."""
        try:
            out = await self._run([self._settings.scontrol, "show", "job", "-o", job_id])
        except SlurmCommandFailed as exc:
            if UNKNOWN_JOB not in str(exc).lower():
                raise TransientFailure(f"scontrol show job: {exc}") from None
        else:
            fields = parse_scontrol_job(out)
            if fields.get("JobState") and fields.get("JobName") == name:
                code, signal = parse_exit_code(fields.get("ExitCode", ""))
                return JobEnd(fields["JobState"], code, signal, fields.get("Reason", ""),
                              parse_run_time(fields.get("RunTime", "")))
        return await self._sacct_end(job_id, name)

    async def _sacct_end(self, job_id: str, name: str) -> JobEnd | None:
        if self._sacct_works is False:
            return None
        try:
            out = await self._run([self._settings.sacct, f"--jobs={job_id}", "--noheader",
                                   "--allocations", "--parsable2",
                                   "--format=JobName%200,State,ExitCode,ElapsedRaw"])
        except SlurmCommandFailed as exc:
            if "accounting storage is disabled" in str(exc).lower():
                self._sacct_works = False  # a cluster without slurmdbd: never ask again
            return None
        except TransientFailure:
            if self._sacct_works:
                raise  # accounting exists and is down for now: ask again later
            return None  # no sacct here (or never answered): the exit record must do
        self._sacct_works = True
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 4 and parts[0] == name and parts[1]:
                code, signal = parse_exit_code(parts[2])
                elapsed = float(parts[3]) if parts[3].isdigit() else None
                # sacct says "CANCELLED by 0": the state is the first word.
                return JobEnd(parts[1].split()[0], code, signal, "", elapsed)
        return None

    def _outcome(self, job_id: str, end: JobEnd | None, execution: Execution,
                 files: JobFiles) -> ExecutionOutcome:
        record = read_exit_record(files.exit_record)
        limit = self._settings.output_limit_bytes
        stdout, stderr = read_capped(files.stdout, limit), read_capped(files.stderr, limit)
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
            "timeout_s": str(execution.timeout_seconds),
        }
        error = _error(job_id, state, exit_code, signal, timed_out, execution.timeout_seconds,
                       end.reason if end else "")
        return ExecutionOutcome(not error, result, error)

    # -- commands --------------------------------------------------------------------------

    async def _ping(self) -> str:
        """"SERVING" when slurmctld answers, else why not (it answers at once either way)."""
        try:
            code, out, err = await self._exec([self._settings.scontrol, "ping"])
        except TransientFailure as exc:
            return f"UNAVAILABLE: {exc}"
        # "Slurmctld(primary) at HOST is UP" (or "is DOWN", then a banner of asterisks).
        first = next((line.strip() for line in (out + err).splitlines() if line.strip()), "")
        if code == 0 and " is UP" in first:
            return "SERVING"
        return f"UNAVAILABLE: {first[:200] or f'scontrol ping exited {code}'}"

    async def _run(self, argv: Sequence[str]) -> str:
        """A Slurm command's stdout. Unreachable controller (or command): TransientFailure;
        any other non-zero exit: SlurmCommandFailed with its message."""
        code, out, err = await self._exec(argv)
        if code != 0:
            message = " ".join((err.strip() or out.strip() or f"exit code {code}").split())[:500]
            if any(marker in message.lower() for marker in UNREACHABLE):
                raise TransientFailure(f"{argv[0]}: {message}")
            raise SlurmCommandFailed(message)
        return out

    async def _exec(self, argv: Sequence[str]) -> tuple[int, str, str]:
        # An argument list, never a shell: nothing from a task reaches a command line unquoted.
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise TransientFailure(f"cannot run {argv[0]}: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._settings.command_timeout)
        except TimeoutError:
            raise TransientFailure(f"{argv[0]} did not answer within "
                                   f"{self._settings.command_timeout:g} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        code = proc.returncode
        return (code if code is not None else -1, out.decode(errors="replace"),
                err.decode(errors="replace"))


def _error(job_id: str, state: str, exit_code: int | None, signal: int | None, timed_out: bool,
           timeout_seconds: int, reason: str) -> str:
    job = f"Slurm job {job_id}"
    why = f" ({reason})" if reason and reason != "None" else ""
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


def _written_at(path: Path) -> float:
    """When the file was last written (wall clock), or now when it is not there."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _read_job_record(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    return text if JOB_ID.fullmatch(text) else ""


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
