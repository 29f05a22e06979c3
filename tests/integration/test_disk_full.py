"""The orchestrator's data dir on a small filesystem that fills up (a 20 MB tmpfs, as root).

Submits ~100 KB tasks until the disk is full: every refusal must be RESOURCE_EXHAUSTED or
UNAVAILABLE (never UNKNOWN or INTERNAL), the daemon must stay up, and once space is freed it
takes tasks again; after a restart every acknowledged task is still there and SQLite's
`PRAGMA integrity_check` says ok. No env-manager answers, so the tasks stay queued (nothing
runs, the store only grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from agent_infra.wire import orchestrator_pb2 as pb
from agent_infra.wire import orchestrator_pb2_grpc

from tests.daemon_support import DaemonProcess, free_port, start_daemon

SIZE_MB = 20
FILLER_MB = 4  # written first, deleted to free space
PAYLOAD_BYTES = 100_000
REFUSALS_TO_STOP = 30  # consecutive refused submits: the disk is full
OK_REFUSALS = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        # Like the Docker tests: a missing prerequisite fails and says what to do, never skips.
        pytest.fail("the disk-full test mounts a 20 MB tmpfs, which needs root: run the suite "
                    "as root (scripts/test.sh does everything else it needs)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.asynccontextmanager
async def orchestrator(workdir: Path, data_dir: Path) -> AsyncIterator[DaemonProcess]:
    daemon = await start_daemon("orchestrator", workdir, args=[
        "--data-dir", str(data_dir), "--env-managers", f"127.0.0.1:{free_port()}"])
    try:
        yield daemon
    finally:
        for channel in daemon.channels:
            await channel.close()
        if daemon.process.returncode is None:
            # stop() kills after 30 s and says so: what the test checks next holds either way
            with contextlib.suppress(AssertionError):
                await daemon.stop(timeout=30)
        daemon.notify.close()


def submit_request(task_id: str) -> pb.SubmitTaskRequest:
    request = pb.SubmitTaskRequest(id=task_id, payload={
        "command": "true", "stdin": "x" * PAYLOAD_BYTES})
    setattr(request, "class", "cpu_short")
    return request


async def test_a_full_disk_is_a_clear_refusal_and_loses_nothing(
        tmp_path: Path, small_disk: Path) -> None:
    data_dir = small_disk / "data"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (FILLER_MB << 20))
    acked: list[str] = []
    refusals: Counter[str] = Counter()
    bad: list[str] = []
    async with orchestrator(tmp_path, data_dir) as daemon:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(daemon.channel())
        consecutive = 0
        n = 0
        while consecutive < REFUSALS_TO_STOP and n < 2000:
            batch = [f"full-{n + i}" for i in range(4)]
            n += len(batch)
            answers = await asyncio.gather(
                *(stub.SubmitTask(submit_request(t), timeout=30) for t in batch),
                return_exceptions=True)
            for task_id, answer in zip(batch, answers, strict=True):
                if isinstance(answer, grpc.aio.AioRpcError):
                    consecutive += 1
                    refusals[answer.code().name] += 1
                    if answer.code() not in OK_REFUSALS:
                        bad.append(f"{task_id}: {answer.code().name} {answer.details()!r:.300}")
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    consecutive = 0
                    if answer.success:
                        acked.append(task_id)
            if daemon.process.returncode is not None:
                break
        assert refusals, f"the disk never filled: {len(acked)} tasks accepted"
        alive = daemon.process.returncode is None
        # Free space: the running daemon must take tasks again.
        filler.unlink()
        if alive:
            again = await stub.SubmitTask(submit_request("after-free"), timeout=30)
            assert again.success, again.error
            acked.append("after-free")
    assert not bad, (f"refusals other than RESOURCE_EXHAUSTED/UNAVAILABLE ({dict(refusals)}):\n"
                     + "\n".join(bad[:10]) + f"\nlog tail:\n{daemon.log_text()[-3000:]}")
    assert alive, f"the orchestrator died on a full disk:\n{daemon.log_text()[-3000:]}"
    print(f"{len(acked)} tasks acknowledged, refusals once full: {dict(refusals)}")

    # Restarted: everything acknowledged is there, and the database is intact.
    async with orchestrator(tmp_path, data_dir) as daemon:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(daemon.channel())
        missing = []
        for task_id in acked:
            try:
                await stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id), timeout=30)
            except grpc.aio.AioRpcError as exc:
                missing.append(f"{task_id}: {exc.code().name}")
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged lost: {missing[:10]}"
    databases = [p for p in data_dir.rglob("*") if p.is_file() and p.read_bytes()[:16]
                 == b"SQLite format 3\0"]
    assert databases, f"no SQLite database in {data_dir}"
    for path in databases:
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
