"""The Slurm executor's pieces without a cluster: payloads, the job script (run by a real
/bin/sh), Slurm's output formats, the routing executor, and job ends Slurm has forgotten
(fake squeue/scontrol/sacct executables on the settings' paths)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from agent_infra.orchestrator.executors.protocol import (
    Execution,
    ExecutionOutcome,
    TransientFailure,
)
from agent_infra.orchestrator.executors.routing import (
    NO_SLURM,
    RoutingExecutor,
    build_executor,
    reload_slurm,
    slurm_executor,
)
from agent_infra.orchestrator.executors.slurm.executor import SlurmExecutor
from agent_infra.orchestrator.executors.slurm.job_files import JobFiles, read_exit_record
from agent_infra.orchestrator.executors.slurm.job_state import (
    parse_exit_code,
    parse_run_time,
    parse_scontrol_job,
)
from agent_infra.orchestrator.executors.slurm.payload import JobSpec, parse_payload
from agent_infra.orchestrator.executors.slurm.submission import (
    job_name,
    render_script,
    time_limit_minutes,
)
from agent_infra.orchestrator.settings import OrchestratorSettings, SlurmSettings
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument

from tests.daemon_support import eventually

# -- payloads ------------------------------------------------------------------------------


def test_command_forms() -> None:
    assert parse_payload({"command": '["echo", "a b"]'}).command == ("echo", "a b")
    assert parse_payload({"command": "echo $HOME | wc"}).command == "echo $HOME | wc"
    assert parse_payload({"command": '"echo hi"'}).command == "echo hi"  # a JSON string
    assert parse_payload({"command": "[ -e /x ] && echo y"}).command == "[ -e /x ] && echo y"


def test_full_payload() -> None:
    spec = parse_payload({"command": "true", "env": '{"A": "1", "_B2": "x y"}', "stdin": "in",
                          "workdir": "/tmp", "gpus": "2"})
    assert spec == JobSpec("true", (("A", "1"), ("_B2", "x y")), "in", "/tmp", 2)


@pytest.mark.parametrize(("payload", "match"), [
    ({}, "payload.command is required"),
    ({"command": "  "}, "payload.command is required"),
    ({"command": "[]"}, "one or more strings"),
    ({"command": '["a", 1]'}, "one or more strings"),
    ({"command": "true", "image": "x"}, "unknown key.*'image'"),
    ({"command": "true", "env": "[1]"}, "JSON object of strings"),
    ({"command": "true", "env": "{"}, "payload.env is not JSON"),
    ({"command": "true", "env": '{"A-B": "1"}'}, "not a valid variable name"),
    ({"command": "true", "env": '{"A;rm": "1"}'}, "not a valid variable name"),
    ({"command": "true", "workdir": "relative"}, "absolute path"),
    ({"command": "true", "gpus": "-1"}, "payload.gpus"),
    ({"command": "true", "gpus": "1000"}, "payload.gpus"),
])
def test_bad_payloads(payload: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_payload(payload)


# -- names and files -----------------------------------------------------------------------


def test_job_names_are_safe_and_files_are_hashed(tmp_path: Path) -> None:
    evil = "a;rm -rf /:$(x)`y`" + "z" * 200
    files = JobFiles.of(tmp_path, evil)
    name = job_name(evil, files.key)
    assert name.startswith("agent-infra-a_rm_-rf__")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    assert len(name) <= 80
    assert files.script.parent == tmp_path
    assert files.script.name == f"{files.key}.sh" and len(files.key) == 32
    # Same id, another orchestrator (work dir): another job name, so never attached to.
    other = JobFiles.of(tmp_path / "other", evil)
    assert job_name(evil, other.key) != name


@pytest.mark.parametrize(("seconds", "minutes"), [(1, 2), (60, 2), (61, 3), (3600, 61)])
def test_time_limit_leaves_a_minute_for_the_job_to_stop_itself(seconds: int, minutes: int
                                                               ) -> None:
    assert time_limit_minutes(seconds) == minutes


# -- the job script, run by a real /bin/sh ---------------------------------------------------


def run_script(tmp_path: Path, spec: JobSpec, timeout: int = 30) -> tuple[int, str, Path]:
    files = JobFiles.of(tmp_path, "t")
    if spec.stdin is not None:
        files.stdin.write_text(spec.stdin)
    files.script.write_text(render_script(spec, files, timeout))
    done = subprocess.run(["/bin/sh", str(files.script)], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "42"}, timeout=60,
                          check=False)
    return done.returncode, done.stdout, files.exit_record


def test_script_quotes_every_value(tmp_path: Path) -> None:
    workdir = tmp_path / "a dir; $(x)"
    workdir.mkdir()
    argv = ("sh", "-c", 'printf "[%s]" "$@" "$V"; pwd; cat', "sh", "'", '"', "$(id)", "`id`",
            "a\nb", "*", "")
    env = (("V", "it's $HOME `x` $(y) \\"),)
    code, out, record_path = run_script(tmp_path, JobSpec(argv, env, "in\n", str(workdir), 0))
    assert code == 0
    assert out == f"['][\"][$(id)][`id`][a\nb][*][][it's $HOME `x` $(y) \\]{workdir}\nin\n"
    record = read_exit_record(record_path)
    assert record is not None
    assert (record.exit_code, record.timed_out, record.job_id) == (0, False, "42")
    assert record.ended >= record.started > 0


def test_script_records_exit_code_and_shell_text(tmp_path: Path) -> None:
    code, out, record_path = run_script(tmp_path, JobSpec("echo $((6 * 7)); exit 5", (), None,
                                                          None, 0))
    assert (code, out) == (5, "42\n")
    record = read_exit_record(record_path)
    assert record is not None and record.exit_code == 5 and not record.timed_out


def test_script_failing_cd_still_records(tmp_path: Path) -> None:
    code, _, record_path = run_script(tmp_path, JobSpec("true", (), None, "/nonexistent/x", 0))
    assert code != 0
    record = read_exit_record(record_path)
    assert record is not None and record.exit_code == code


def test_script_timeout_is_recorded(tmp_path: Path) -> None:
    started = time.monotonic()
    code, _, record_path = run_script(tmp_path, JobSpec("sleep 30", (), None, None, 0), timeout=1)
    assert time.monotonic() - started < 10
    record = read_exit_record(record_path)
    assert code == 124 and record is not None and record.timed_out


def test_exit_124_before_the_timeout_is_not_a_timeout(tmp_path: Path) -> None:
    code, _, record_path = run_script(tmp_path, JobSpec("exit 124", (), None, None, 0))
    record = read_exit_record(record_path)
    assert code == 124 and record is not None and not record.timed_out


# -- Slurm's formats -----------------------------------------------------------------------


def test_scontrol_and_times() -> None:
    line = ("JobId=7 JobName=agent-infra-x-1 UserId=root(0) JobState=FAILED "
            "Reason=NonZeroExitCode ExitCode=3:0 RunTime=1-02:03:04 TimeLimit=00:02:00")
    fields = parse_scontrol_job(line)
    assert fields["JobState"] == "FAILED" and fields["JobName"] == "agent-infra-x-1"
    assert parse_exit_code(fields["ExitCode"]) == (3, 0)
    assert parse_exit_code("0:15") == (0, 15)
    assert parse_exit_code("") == (None, None)
    assert parse_run_time(fields["RunTime"]) == 86400 + 2 * 3600 + 3 * 60 + 4
    assert parse_run_time("05:06") == 306
    assert parse_run_time("garbage") is None


# -- the executor with fake Slurm commands ---------------------------------------------------


def fake_command(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def fake_settings(tmp_path: Path, **commands: str) -> SlurmSettings:
    bins = tmp_path / "bin"
    bins.mkdir(exist_ok=True)
    defaults = {
        "scontrol": 'if [ "$1" = ping ]; then echo "Slurmctld(primary) at h is UP"; exit 0; fi\n'
                    'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1',
        "squeue": "exit 0",
        "sacct": 'echo "Slurm accounting storage is disabled" >&2; echo called >> "$0.log"; '
                 "exit 1",
        "sbatch": 'echo called >> "$0.log"; echo 99',
    }
    paths = {name: fake_command(bins / name, commands.get(name, body))
             for name, body in defaults.items()}
    return SlurmSettings.model_validate({"enabled": True, "poll_interval": 0.05,
                                         "command_timeout": 5, **paths})


def calls(command: str) -> int:
    """How often a fake command that logs its calls was run."""
    log = Path(command + ".log")
    return log.read_text().count("called") if log.exists() else 0


def slurm_execution(execution_id: str = "job-1", **payload: str) -> Execution:
    return Execution(execution_id, "gpu_slurm", payload or {"command": "true"}, 60)


async def test_forgotten_job_ends_from_its_exit_record(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    files = JobFiles.of(work, "job-1")
    files.job_record.write_text("17\n")
    files.exit_record.write_text("0 100.0 101.5 false 17\n")
    files.stdout.write_text("kept\n")
    executor = SlurmExecutor(settings, work)
    outcome = await executor.execute(slurm_execution())
    assert outcome.success, outcome
    assert outcome.result["job_id"] == "17"
    assert outcome.result["stdout"] == "kept\n"
    assert outcome.result["duration_ms"] == "1500.0"
    assert calls(settings.sbatch) == 0, "a known job must not be resubmitted"
    # Without accounting, sacct is asked once and then no more.
    await executor.execute(slurm_execution())
    assert calls(settings.sacct) == 1


async def test_forgotten_job_without_record_is_a_clear_failure(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    JobFiles.of(work, "job-1").job_record.write_text("17\n")
    outcome = await SlurmExecutor(fake_settings(tmp_path), work).execute(slurm_execution())
    assert not outcome.success
    assert outcome.result["state"] == "UNKNOWN"
    assert "Slurm no longer knows it" in outcome.error


async def test_a_reused_job_id_is_not_taken_for_ours(tmp_path: Path) -> None:
    # After a cluster reset job 17 is someone else's: it must not answer for our execution.
    settings = fake_settings(
        tmp_path, squeue='echo "RUNNING|somebody-elses-job"',
        scontrol='if [ "$1" = ping ]; then echo "Slurmctld(primary) at h is UP"; exit 0; fi\n'
                 'echo "JobId=17 JobName=somebody-elses-job JobState=COMPLETED ExitCode=0:0"')
    work = tmp_path / "work"
    work.mkdir()
    JobFiles.of(work, "job-1").job_record.write_text("17\n")
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert outcome.result["state"] == "UNKNOWN"


async def test_sacct_answers_when_scontrol_forgot(tmp_path: Path) -> None:
    work = tmp_path / "work"
    name = job_name("job-1", JobFiles.of(work, "job-1").key)
    settings = fake_settings(tmp_path, sacct=f'echo "{name}|CANCELLED by 0|0:15|12"')
    work.mkdir()
    JobFiles.of(work, "job-1").job_record.write_text("17\n")
    outcome = await SlurmExecutor(settings, work).execute(slurm_execution())
    assert not outcome.success
    assert outcome.result["state"] == "CANCELLED"
    assert outcome.result["duration_ms"] == "12000.0"
    assert outcome.error == "Slurm job 17 was cancelled"


async def test_unreachable_controller_and_missing_commands_are_transient(tmp_path: Path
                                                                         ) -> None:
    down = fake_settings(tmp_path, scontrol='echo "Slurmctld(primary) at h is DOWN"; exit 1')
    executor = SlurmExecutor(down, tmp_path / "work")
    with pytest.raises(TransientFailure, match="is DOWN"):
        await executor.execute(slurm_execution())
    assert (await executor.health())["slurm"] == "UNAVAILABLE: Slurmctld(primary) at h is DOWN"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(executor.wait_until_available("gpu_slurm"), 0.3)

    refused = fake_settings(tmp_path, sbatch='echo "sbatch: error: Batch job submission failed: '
                                             'Unable to contact slurm controller" >&2; exit 1')
    with pytest.raises(TransientFailure, match="Unable to contact slurm controller"):
        await SlurmExecutor(refused, tmp_path / "work2").execute(slurm_execution())

    missing = SlurmSettings(enabled=True, scontrol=str(tmp_path / "no-such-scontrol"))
    health = await SlurmExecutor(missing, tmp_path / "work3").health()
    assert health["slurm"].startswith("UNAVAILABLE: cannot run")


async def test_a_long_outage_while_following_hands_the_attempt_back(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, squeue='echo "slurm_load_jobs error: Unable to contact '
                                              'slurm controller (connect failure)" >&2; exit 1')
    settings = settings.model_copy(update={"outage_grace": 0.3})
    work = tmp_path / "work"
    work.mkdir()
    JobFiles.of(work, "job-1").job_record.write_text("17\n")
    with pytest.raises(TransientFailure, match="left running and re-attached"):
        await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)


async def test_cancel_is_best_effort(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    settings = settings.model_copy(update={"scancel": fake_command(
        tmp_path / "bin" / "scancel", 'echo "$@" >> "$0.log"; echo "scancel: error: boom" >&2; '
                                      "exit 1")})
    executor = SlurmExecutor(settings, tmp_path / "work")
    await executor.cancel("job-1", "gpu_slurm")  # fails, logged, not raised
    await executor.cancel("job-1", "cpu_short")  # not ours: nothing run
    args = await asyncio.to_thread(lambda: Path(settings.scancel + ".log").read_text().split())
    name = job_name("job-1", JobFiles.of((tmp_path / "work").absolute(), "job-1").key)
    assert args == [f"--name={name}", f"--user={os.getuid()}"]


async def test_payload_and_class_are_checked_before_any_command(tmp_path: Path) -> None:
    nothing = SlurmSettings(enabled=True, sbatch="/nonexistent", squeue="/nonexistent",
                            scontrol="/nonexistent", sacct="/nonexistent")
    executor = SlurmExecutor(nothing, tmp_path)
    assert executor.supports("gpu_slurm") == ""
    assert "only gpu_slurm" in executor.supports("cpu_short")
    with pytest.raises(InvalidArgument):
        await executor.execute(slurm_execution(image="x"))
    with pytest.raises(FailedPrecondition):
        await executor.execute(Execution("t", "cpu_short", {"command": "true"}, 60))


# -- routing -------------------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, supported: str = "") -> None:
        self.name = name
        self.supported = supported
        self.calls: list[str] = []
        self.closed = False

    def supports(self, task_class: str) -> str:
        return self.supported

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        self.calls.append(execution.task_class)
        return ExecutionOutcome(True, {"by": self.name}, "")

    async def cancel(self, execution_id: str, task_class: str) -> None:
        self.calls.append(f"cancel:{execution_id}")

    async def wait_until_available(self, task_class: str) -> None:
        self.calls.append(f"wait:{task_class}")

    async def health(self) -> dict[str, str]:
        return {self.name: "SERVING"}

    async def close(self) -> None:
        self.closed = True


async def test_routing_sends_each_class_to_its_owner() -> None:
    env, slurm = Recorder("env", supported="not here"), Recorder("slurm")
    router = RoutingExecutor({"gpu_slurm": slurm}, env)
    assert router.supports("gpu_slurm") == "" and router.supports("cpu_short") == "not here"
    assert (await router.execute(slurm_execution())).result == {"by": "slurm"}
    cpu = Execution("c", "cpu_short", {}, 1)
    assert (await router.execute(cpu)).result == {"by": "env"}
    await router.wait_until_available("gpu_slurm")
    await router.wait_until_available("gpu")
    await router.cancel("s1", "gpu_slurm")
    await router.cancel("c1", "cpu_long")
    assert slurm.calls == ["gpu_slurm", "wait:gpu_slurm", "cancel:s1"]
    assert env.calls == ["cpu_short", "wait:gpu", "cancel:c1"]
    assert await router.health() == {"env": "SERVING", "slurm": "SERVING"}
    await router.close()
    assert env.closed and slurm.closed


def settings_with(tmp_path: Path, **slurm: Any) -> OrchestratorSettings:
    return OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "store": {"data_dir": str(tmp_path)},
        "classes": {"cpu_short": {}, "gpu_slurm": {}},
        "slurm": slurm,
    })


async def test_build_executor(tmp_path: Path) -> None:
    without = build_executor(settings_with(tmp_path))
    assert without.supports("gpu_slurm") == NO_SLURM
    assert "none is configured" in NO_SLURM
    assert without.supports("cpu_short") == ""
    await without.close()
    with_slurm = build_executor(settings_with(tmp_path, enabled=True, partition="gpu"))
    assert isinstance(with_slurm, RoutingExecutor)
    assert with_slurm.supports("gpu_slurm") == ""
    assert with_slurm.supports("cpu_short") == ""
    owner = with_slurm.owner("gpu_slurm")
    assert isinstance(owner, SlurmExecutor)
    assert owner._work_dir == tmp_path / "slurm"
    await with_slurm.close()
    configured = settings_with(tmp_path, enabled=True, work_dir=str(tmp_path / "w"),
                               sbatch_args=["--qos=x"], poll_interval="500ms")
    assert configured.slurm.poll_interval == 0.5
    executor = build_executor(configured)
    assert isinstance(executor, RoutingExecutor)
    owner = executor.owner("gpu_slurm")
    assert isinstance(owner, SlurmExecutor) and owner._work_dir == tmp_path / "w"


def test_old_job_files_are_pruned_and_others_left(tmp_path: Path) -> None:
    executor = SlurmExecutor(SlurmSettings(enabled=True, retention=3600), tmp_path)
    key = "0123456789abcdef0123456789abcdef"
    old = [tmp_path / f"{key}.out", tmp_path / f"{key}.exit.tmp"]
    kept = [tmp_path / f"{key[::-1]}.out", tmp_path / "notes.out", tmp_path / f"{key}.txt"]
    for path in old + kept:
        path.write_text("x")
    for path in [*old, *kept[1:]]:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    executor._prepare_dir()
    assert [p.exists() for p in old] == [False, False]
    assert all(p.exists() for p in kept)


# -- a job left PENDING is bounded ------------------------------------------------------------

UP = 'if [ "$1" = ping ]; then echo "Slurmctld(primary) at h is UP"; exit 0; fi\n'


def counting(body: str) -> str:
    """A fake command body that knows how often it ran before ($n, from 1)."""
    return ('n=$(cat "$0.n" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$0.n"\n'
            + body)


def pending_job(tmp_path: Path, waited: float, **commands: str) -> tuple[SlurmSettings, Path,
                                                                         str]:
    """Job 17 of execution job-1, submitted `waited` seconds ago, by fake Slurm commands that
    keep it PENDING until scancel (logging its arguments) cancels it."""
    work = tmp_path / "work"
    work.mkdir()
    name = job_name("job-1", JobFiles.of(work, "job-1").key)
    record = JobFiles.of(work, "job-1").job_record
    record.write_text("17\n")
    os.utime(record, (time.time() - waited, time.time() - waited))
    bins = tmp_path / "bin"
    bins.mkdir()
    cancelled = bins / "cancelled"
    defaults = {
        "squeue": f'[ -e {cancelled} ] || echo "PENDING|{name}|Resources"',
        "scontrol": UP + f'if [ -e {cancelled} ]; then echo "JobId=17 JobName={name} '
                         'JobState=CANCELLED Reason=Resources ExitCode=0:0 RunTime=00:00:00"; '
                         f'else echo "JobId=17 JobName={name} JobState=PENDING '
                         'Reason=Resources ExitCode=0:0 RunTime=00:00:00"; fi',
        "scancel": f'echo "$@" >> "$0.log"; touch {cancelled}',
    }
    settings = fake_settings(tmp_path, **{**defaults, **commands})
    scancel = fake_command(bins / "scancel", commands.get("scancel", defaults["scancel"]))
    return settings.model_copy(update={"scancel": scancel}), work, name


def name_commands(name: str, *commands: str) -> None:
    """Put the job's name where the fake commands say NAME."""
    for command in commands:
        path = Path(command)
        path.write_text(path.read_text().replace("NAME", name))


def scancel_calls(settings: SlurmSettings) -> list[list[str]]:
    log = Path(settings.scancel + ".log")
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


async def test_a_job_pending_past_the_tasks_timeout_is_cancelled(tmp_path: Path) -> None:
    settings, work, name = pending_job(tmp_path, waited=120)
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert not outcome.success
    assert outcome.error.startswith("never started: Slurm job 17 was still PENDING (Resources) "
                                    "after 12"), outcome.error
    assert outcome.error.endswith("s (the task's timeout of 60 s); it was cancelled")
    assert outcome.result["never_started"] == "true"
    assert outcome.result["state"] == "CANCELLED"
    # Only while still pending: a job that has just started is never cancelled by this.
    assert scancel_calls(settings) == [[f"--name={name}", f"--user={os.getuid()}",
                                        "--state=PENDING"]]
    assert calls(settings.sbatch) == 0


async def test_slurm_pending_timeout_replaces_the_tasks_timeout(tmp_path: Path) -> None:
    settings, work, _ = pending_job(tmp_path, waited=0)
    settings = settings.model_copy(update={"pending_timeout": 0.3})
    started = time.monotonic()
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert time.monotonic() - started < 5
    assert "(slurm.pending_timeout 0.3 s); it was cancelled" in outcome.error
    assert outcome.result["never_started"] == "true"
    assert SlurmSettings().pending_timeout == 0  # by default, the task's own timeout


async def test_a_job_pending_within_its_time_is_left_alone(tmp_path: Path) -> None:
    # Pending for three polls, then running, then done: a minute's timeout is far off.
    settings, work, name = pending_job(
        tmp_path, waited=0,
        squeue=counting('if [ "$n" -le 3 ]; then echo "PENDING|NAME|Priority"; '
                        'elif [ "$n" -le 5 ]; then echo "RUNNING|NAME|None"; fi'),
        scontrol=UP + 'echo "JobId=17 JobName=NAME JobState=COMPLETED ExitCode=0:0"')
    name_commands(name, settings.squeue, settings.scontrol)
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert outcome.success, outcome
    assert "never_started" not in outcome.result
    assert scancel_calls(settings) == []


async def test_a_short_timeout_still_gives_a_job_the_floor_to_start(tmp_path: Path) -> None:
    # A 2 s task pending for 30 s: under the 60 s floor, so it is left to start and finish.
    settings, work, name = pending_job(
        tmp_path, waited=30,
        squeue=counting('if [ "$n" -le 2 ]; then echo "PENDING|NAME|Priority"; '
                        'elif [ "$n" -le 3 ]; then echo "RUNNING|NAME|None"; fi'),
        scontrol=UP + 'echo "JobId=17 JobName=NAME JobState=COMPLETED ExitCode=0:0"')
    name_commands(name, settings.squeue, settings.scontrol)
    short = Execution("job-1", "gpu_slurm", {"command": "true"}, 2)
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(short), 10)
    assert outcome.success, outcome
    assert scancel_calls(settings) == []


@pytest.mark.parametrize("first", ["PENDING", "RUNNING"])
async def test_a_job_that_has_started_runs_on_past_the_pending_limit(tmp_path: Path,
                                                                     first: str) -> None:
    """RUNNING: seen started, so never cancelled. PENDING: it starts as the limit passes, so
    `scancel --state=PENDING` finds nothing to cancel and the job runs to its end."""
    settings, work, name = pending_job(
        tmp_path, waited=120,
        squeue=counting(f'if [ "$n" -le 1 ]; then echo "{first}|NAME|None"; '
                        'elif [ "$n" -le 3 ]; then echo "RUNNING|NAME|None"; fi'),
        scontrol=UP + 'echo "JobId=17 JobName=NAME JobState=COMPLETED ExitCode=0:0"',
        scancel='echo "$@" >> "$0.log"')  # a job no longer pending: nothing to cancel
    name_commands(name, settings.squeue, settings.scontrol)
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert outcome.success, outcome
    assert "never_started" not in outcome.result
    assert len(scancel_calls(settings)) == (1 if first == "PENDING" else 0)


async def test_a_failed_pending_cancel_is_tried_again(tmp_path: Path) -> None:
    bins_cancelled = tmp_path / "bin" / "cancelled"
    settings, work, _ = pending_job(tmp_path, waited=120, scancel=counting(
        'echo "$@" >> "$0.log"\n'
        'if [ "$n" -le 1 ]; then echo "scancel: error: Unable to contact slurm controller" >&2; '
        f"exit 1; fi\ntouch {bins_cancelled}"))
    outcome = await asyncio.wait_for(SlurmExecutor(settings, work).execute(slurm_execution()), 10)
    assert outcome.error.startswith("never started: Slurm job 17"), outcome
    assert len(scancel_calls(settings)) == 2


# -- settings reloaded into the running executor ------------------------------------------------


def running_slurm(executor: Any) -> SlurmExecutor:
    found = slurm_executor(executor)
    assert found is not None
    return found


async def test_reload_applies_slurm_settings_to_the_running_executor(tmp_path: Path) -> None:
    running = settings_with(tmp_path, enabled=True, partition="a", poll_interval=5)
    executor = build_executor(running)
    slurm = running_slurm(executor)
    new = settings_with(tmp_path, enabled=True, partition="b", poll_interval="250ms",
                        sbatch_args=["--qos=x"], pending_timeout="10m")
    applied = reload_slurm(executor, running, new)
    assert applied == new.slurm
    assert slurm.settings is applied
    assert (slurm.settings.partition, slurm.settings.poll_interval,
            slurm.settings.sbatch_args, slurm.settings.pending_timeout) == ("b", 0.25,
                                                                             ["--qos=x"], 600)
    # Moving the work dir needs a restart: the rest applies, the work dir stays.
    moved = settings_with(tmp_path, enabled=True, partition="c", work_dir=str(tmp_path / "w"))
    applied = reload_slurm(executor, new, moved)
    assert applied.partition == "c" and applied.work_dir is None
    assert slurm._work_dir == tmp_path / "slurm"
    # Turning Slurm off needs a restart: refused, all of [slurm] kept as it runs. (What runs is
    # what the orchestrator keeps as its settings: `applied`.)
    in_effect = moved.model_copy(update={"slurm": applied})
    off = settings_with(tmp_path, enabled=False, partition="d")
    assert reload_slurm(executor, in_effect, off) == applied
    assert slurm.settings.partition == "c"
    assert executor.supports("gpu_slurm") == ""
    await executor.close()


async def test_reload_cannot_turn_slurm_on(tmp_path: Path) -> None:
    running = settings_with(tmp_path)
    executor = build_executor(running)
    kept = reload_slurm(executor, running, settings_with(tmp_path, enabled=True))
    assert kept == running.slurm and not kept.enabled
    assert executor.supports("gpu_slurm") == NO_SLURM
    # Without Slurm, other [slurm] keys are simply taken (nothing runs them).
    assert reload_slurm(executor, running, settings_with(tmp_path, partition="p")).partition == "p"
    await executor.close()


async def test_new_submissions_take_reloaded_settings(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, sbatch='echo "$@" >> "$0.log"; echo 99')
    settings = settings.model_copy(update={"partition": "a"})
    executor = SlurmExecutor(settings, tmp_path / "work")
    await executor.execute(slurm_execution("first"))  # forgotten at once: ends UNKNOWN
    executor.reconfigure(settings.model_copy(update={"partition": "b",
                                                     "sbatch_args": ["--qos=x"]}))
    await executor.execute(slurm_execution("second"))
    first, second = await asyncio.to_thread(
        lambda: Path(settings.sbatch + ".log").read_text().splitlines())
    assert "--partition=a" in first.split() and "--qos=x" not in first.split()
    assert "--partition=b" in second.split() and "--qos=x" in second.split()


async def test_a_job_in_flight_carries_on_under_reloaded_settings(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    name = job_name("job-1", JobFiles.of(work, "job-1").key)
    JobFiles.of(work, "job-1").job_record.write_text("17\n")
    # The old squeue says it runs for ever; the new one (a reload) has it done.
    settings = fake_settings(
        tmp_path, squeue=f'echo called >> "$0.log"; echo "RUNNING|{name}|None"',
        scontrol=UP + f'echo "JobId=17 JobName={name} JobState=COMPLETED ExitCode=0:0"')
    executor = SlurmExecutor(settings, work)
    run = asyncio.create_task(executor.execute(slurm_execution()))
    async def followed() -> bool:
        return calls(settings.squeue) >= 2
    await eventually(followed, "the job to be followed", timeout=10)
    assert not run.done()
    finished = fake_command(tmp_path / "bin" / "squeue-new", "exit 0")
    executor.reconfigure(settings.model_copy(update={"squeue": finished, "poll_interval": 0.1}))
    outcome = await asyncio.wait_for(run, 10)
    assert outcome.success, outcome
    assert outcome.result["job_id"] == "17"
    assert calls(settings.sbatch) == 0, "a job in flight is followed, never submitted again"
