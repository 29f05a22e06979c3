"""SlurmExecutor: submits each execution as one batch job, at most once, and follows it.

A re-dispatch of the same execution (a transient failure, an orchestrator restart) attaches to
the job instead of submitting a second one: first through the recorded job id, then, if the
orchestrator died between sbatch and that record, through `squeue --name` (the job name carries
the hash). A job still pending past its limit is cancelled (only while still pending, so a job
that has just started runs on). The settings can change while it runs (`reconfigure`, on
SIGHUP): each command and poll reads the current ones.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_infra.runtime.errors import FailedPrecondition
from agent_infra.runtime.logs import get_logger

from ...settings import SlurmSettings
from ..protocol import Execution, ExecutionOutcome, TransientFailure, wait_until_reachable
from . import job_files, job_state, status
from .job_files import JobFiles
from .job_state import ACTIVE_STATES, NO_ACCOUNTING, JobEnd
from .outcome import as_never_started, job_outcome, never_started_error, pending_limit
from .payload import SLURM_CLASS, JobSpec, parse_payload
from .submission import job_name, render_script, sbatch_argv

log = get_logger("dispatch_slurm")
PRUNE_EVERY_S = 3600.0


class SlurmCommandFailed(Exception):
    """A Slurm command exited non-zero for a reason other than an unreachable controller."""


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
        # Since this process started (GetMetrics slurm_jobs_*_total): jobs sbatch accepted, and
        # followed jobs that ended successfully or not.
        self.jobs_submitted = 0
        self.jobs_completed = 0
        self.jobs_failed = 0

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
            outcome = await self._follow(submitted, job_name(execution.execution_id, files.key),
                                         execution, files)
            if outcome.success:
                self.jobs_completed += 1
            else:
                self.jobs_failed += 1
            return outcome
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
        async def answers() -> bool:
            return await self._ping() == "SERVING"

        if await wait_until_reachable(self._reachable, answers,
                                      lambda: self._settings.poll_interval):
            log.info("slurm_back")

    async def health(self) -> dict[str, str]:
        return {"slurm": await self._ping()}

    async def recorded_job_id(self, execution_id: str) -> str:
        """The job id sbatch gave the execution ('' before it answered)."""
        files = JobFiles.of(self._work_dir, execution_id)
        job_id = await asyncio.to_thread(job_files.read_job_record, files.job_record)
        if not job_id:
            finished = await asyncio.to_thread(job_files.read_exit_record, files.exit_record)
            job_id = finished.job_id if finished is not None else ""
        return job_id

    async def job_status(self, execution_id: str) -> dict[str, Any] | None:
        """The execution's job as Slurm knows it now (see status.py), None before sbatch
        answered. An unreachable controller is said in `slurm_error` beside what the job's
        own files tell."""
        job_id = await self.recorded_job_id(execution_id)
        if not job_id:
            return None
        files = JobFiles.of(self._work_dir, execution_id)
        name = job_name(execution_id, files.key)
        fields: dict[str, str] = {}
        error = ""
        try:
            out = await self._run([self._settings.scontrol, "show", "job", "-o", job_id])
        except SlurmCommandFailed as exc:
            if not job_state.is_unknown_job(str(exc)):
                error = str(exc)
        except TransientFailure as exc:
            error = str(exc)
        else:
            fields = job_state.parse_scontrol_job(out)
            if fields.get("JobName") != name:
                fields = {}  # the id now names another job: ours is forgotten
        record = status.job_record(
            job_id, name, fields,
            await asyncio.to_thread(job_files.read_exit_record, files.exit_record))
        if error:
            record["slurm_error"] = error
        return record

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
        recorded = await asyncio.to_thread(job_files.read_job_record, files.job_record)
        if recorded:
            log.info("slurm_attach", execution_id=execution.execution_id, job_id=recorded,
                     found_by="record")
            return recorded
        name = job_name(execution.execution_id, files.key)
        found = await self._jobs_named(name)
        if found:
            # Submitted by an orchestrator that died before recording it: attach, never resubmit.
            job_id = max(found, key=int)
            await asyncio.to_thread(job_files.write_atomic, files.job_record, job_id + "\n")
            log.info("slurm_attach", execution_id=execution.execution_id, job_id=job_id,
                     found_by="name")
            return job_id
        finished = await asyncio.to_thread(job_files.read_exit_record, files.exit_record)
        if finished is not None and finished.job_id:
            # Ran to its end so long ago that Slurm has forgotten it; its record remains.
            return finished.job_id
        await asyncio.to_thread(self._write_job_files, spec, files, execution.timeout_seconds)
        try:
            out = await self._run(sbatch_argv(self._settings, name, spec, files,
                                              execution.timeout_seconds))
        except SlurmCommandFailed as exc:
            # Slurm refused the job as asked (no such partition, no GPUs, over a limit...).
            return ExecutionOutcome(False, {"state": "REFUSED"},
                                    f"sbatch refused the job: {exc}")
        job_id = job_state.sbatch_job_id(out)
        if not job_id:
            raise TransientFailure(f"sbatch answered {out.strip()!r:.200}, not a job id")
        await asyncio.to_thread(job_files.write_atomic, files.job_record, job_id + "\n")
        self.jobs_submitted += 1
        log.info("slurm_submitted", execution_id=execution.execution_id, job_id=job_id)
        return job_id

    async def _jobs_named(self, name: str) -> list[str]:
        out = await self._run([self._settings.squeue, "--noheader", "--all", "--states=all",
                               f"--user={self._uid}", f"--name={name}", "--format=%i"])
        return job_state.job_ids(out)

    def _prepare_dir(self) -> None:
        # Outputs may hold secrets from the payload's env: only the orchestrator's user reads them.
        self._work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = time.time()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            job_files.prune(self._work_dir, self._settings.retention, now)

    def _write_job_files(self, spec: JobSpec, files: JobFiles, timeout_seconds: int) -> None:
        if spec.stdin is not None:
            job_files.write_atomic(files.stdin, spec.stdin, mode=0o600)
        # A stale exit record (from a run Slurm never got) must not be read as this job's end.
        files.exit_record.unlink(missing_ok=True)
        job_files.write_atomic(files.script, render_script(spec, files, timeout_seconds),
                               mode=0o700)
        # Slurm opens --output/--error with the job's umask: created here first, 0600, they
        # keep that mode (an existing file's mode is not changed by opening it).
        for output in (files.stdout, files.stderr):
            job_files.create_private(output)

    # -- following -------------------------------------------------------------------------

    async def _follow(self, job_id: str, name: str, execution: Execution, files: JobFiles
                      ) -> ExecutionOutcome:
        """Poll until the job ends. Every answer is checked against the job's name: a recorded
        id that Slurm has since given to another job (ids restart with a new cluster state)
        must not be taken for ours."""
        outage_since: float | None = None
        # When sbatch answered (the job record is written right then): what PENDING counts from,
        # across re-dispatches and orchestrator restarts.
        submitted = await asyncio.to_thread(job_files.written_at, files.job_record)
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
                return as_never_started(outcome, never_started)
            return outcome

    async def _expire_pending(self, job_id: str, name: str, reason: str, submitted: float,
                              execution: Execution) -> str:
        """'' while the job may wait on; past its pending limit, scancel it (only if it is still
        pending: one that has just started runs on) and return the task's error."""
        configured = self._settings.pending_timeout
        limit = pending_limit(configured, execution.timeout_seconds)
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
        log.warning("slurm_never_started", execution_id=execution.execution_id, job_id=job_id,
                    waited_s=round(waited, 1), reason=reason)
        return never_started_error(job_id, reason, waited, configured,
                                   execution.timeout_seconds)

    async def _active_state(self, job_id: str, name: str) -> tuple[str, str]:
        """The job's state while squeue lists it (pending, running, completing), else '', and
        Slurm's reason for it (why it is pending)."""
        try:
            out = await self._run([self._settings.squeue, f"--jobs={job_id}", "--noheader",
                                   "--format=%T|%j|%r"])
        except SlurmCommandFailed as exc:
            if job_state.is_unknown_job(str(exc)):
                return "", ""
            raise TransientFailure(f"squeue: {exc}") from None
        return job_state.squeue_state(out, name)

    async def _job_end(self, job_id: str, name: str) -> JobEnd | None:
        """How the job ended, from scontrol, else sacct; None when neither knows it any more."""
        try:
            out = await self._run([self._settings.scontrol, "show", "job", "-o", job_id])
        except SlurmCommandFailed as exc:
            if not job_state.is_unknown_job(str(exc)):
                raise TransientFailure(f"scontrol show job: {exc}") from None
        else:
            if (end := job_state.scontrol_end(out, name)) is not None:
                return end
        return await self._sacct_end(job_id, name)

    async def _sacct_end(self, job_id: str, name: str) -> JobEnd | None:
        if self._sacct_works is False:
            return None
        try:
            out = await self._run([self._settings.sacct, f"--jobs={job_id}", "--noheader",
                                   "--allocations", "--parsable2",
                                   "--format=JobName%200,State,ExitCode,ElapsedRaw"])
        except SlurmCommandFailed as exc:
            if NO_ACCOUNTING in str(exc).lower():
                self._sacct_works = False  # a cluster without slurmdbd: never ask again
            return None
        except TransientFailure:
            if self._sacct_works:
                raise  # accounting exists and is down for now: ask again later
            return None  # no sacct here (or never answered): the exit record must do
        self._sacct_works = True
        return job_state.sacct_end(out, name)

    def _outcome(self, job_id: str, end: JobEnd | None, execution: Execution,
                 files: JobFiles) -> ExecutionOutcome:
        limit = self._settings.output_limit_bytes
        return job_outcome(job_id, end, job_files.read_exit_record(files.exit_record),
                           job_files.read_capped(files.stdout, limit),
                           job_files.read_capped(files.stderr, limit), execution.timeout_seconds)

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
            if job_state.is_unreachable(message):
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
