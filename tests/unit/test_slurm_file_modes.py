"""Issue 10, finding 12: a Slurm job's files are the orchestrator's user's alone (0700/0600).

Under a loose umask (022), the work dir, the job script, its stdin, stdout, stderr and the exit
record the job writes are readable by nobody else. (Jobs share the orchestrator's uid, so modes
cannot keep one job from another's files: README's Slurm section says so.)
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_infra.orchestrator.executors.slurm.executor import SlurmExecutor
from agent_infra.orchestrator.executors.slurm.job_files import JobFiles
from agent_infra.orchestrator.executors.slurm.payload import parse_payload
from agent_infra.orchestrator.settings import SlurmSettings


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_job_files_are_private_under_a_loose_umask(tmp_path: Path, loose_umask: None) -> None:
    work = tmp_path / "work"
    executor = SlurmExecutor(SlurmSettings(enabled=True), work)
    files = JobFiles.of(work.absolute(), "job-1")
    executor._prepare_dir()
    executor._write_job_files(parse_payload({"command": "echo hi > made-by-job",
                                             "stdin": "secret", "workdir": str(work)}),
                              files, 30)
    assert mode(work) == 0o700
    assert mode(files.script) == 0o700
    assert {mode(files.stdin), mode(files.stdout), mode(files.stderr)} == {0o600}

    # As slurmstepd would run it: the output files exist already (their mode is kept), and
    # what the job itself writes is created under its umask 077.
    with files.stdout.open("a") as out, files.stderr.open("a") as err:
        subprocess.run(["/bin/sh", str(files.script)], stdout=out, stderr=err, check=True,
                       env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "42"}, timeout=60)
    assert files.exit_record.read_text().startswith("0 ")
    assert mode(files.exit_record) == 0o600
    assert mode(work / "made-by-job") == 0o600
    assert {mode(files.stdout), mode(files.stderr)} == {0o600}
