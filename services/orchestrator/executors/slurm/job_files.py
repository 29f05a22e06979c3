"""One execution's files in the Slurm work dir: where they are, and reading and writing them.

They are named by a hash of the work dir and the execution id (the id itself never names a
file): the job script (.sh), its stdin (.in), stdout (.out) and stderr (.err), the job id
recorded once sbatch answered (.job), and the exit record the script writes when the command
ends (.exit). Every write is atomic: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .job_state import JOB_ID

# Every file name this module makes (a .tmp while it is written); nothing else is pruned.
JOB_FILE = re.compile(r"^[0-9a-f]{32}\.(sh|in|out|err|exit|job)(\.tmp)?$")


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


def written_at(path: Path) -> float:
    """When the file was last written (wall clock), or now when it is not there."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def read_job_record(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    return text if JOB_ID.fullmatch(text) else ""


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def create_private(path: Path) -> None:
    """`path` empty and mode 0600, whatever the umask."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)


def prune(work_dir: Path, retention: float, now: float) -> None:
    """Delete job files last written over `retention` seconds before `now`."""
    for path in work_dir.iterdir():
        if not JOB_FILE.fullmatch(path.name):
            continue  # not ours: left alone
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > retention:
                path.unlink()
