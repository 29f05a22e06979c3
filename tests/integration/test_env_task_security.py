"""ExecuteTask as an attacker would use it (issue 10, findings 3, 4, 9, 10), on the real engine.

Each test repeats an attack that worked before and checks it no longer does: a task planting a
set-uid root binary in a class mount, a task id's stored result handed to another request, output
that could never be delivered, work left running after its caller had gone.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
import pytest_asyncio
from agent_infra.env_manager.tasks.payload import caller_identity
from agent_infra.env_manager.tasks.workloads import MIB, TaskSettings
from agent_infra.runtime.errors import AlreadyExists, Unavailable

from tests.integration.test_env_tasks import (
    CLASS,
    Harness,
    busybox_class,
    eventually,
    run,
    task_id,
    writable_by_tasks,
)

pytestmark = pytest.mark.docker


@pytest_asyncio.fixture
async def harness(docker: aiodocker.Docker, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(docker, tmp_path)
    try:
        yield h
    finally:
        await h.close()

# -- finding 3: a task cannot become root on the host through a class mount -----------------

SETUID_ATTACK = ("id -u; id -g; cp /bin/busybox /m/rootshell; chown 0:0 /m/rootshell; "
                 "chmod 4755 /m/rootshell; mknod /m/mem c 1 1; ls -ln /m")


def setuid_root_files(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        info = path.lstat()
        if info.st_uid == 0 and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(str(path))
    return found


async def test_a_task_cannot_plant_a_setuid_root_binary_in_an_rw_mount(
        harness: Harness) -> None:
    folder = writable_by_tasks(harness.tmp_path / "shared")
    runner = await harness.runner({CLASS: busybox_class(mounts=[f"{folder}:/m:rw"])})
    outcome = await run(runner, SETUID_ATTACK)
    uid, gid = outcome.result["stdout"].splitlines()[:2]
    assert (uid, gid) == ("65534", "65534"), outcome.result
    # On the host, afterwards: nothing set-uid (or set-gid) and owned by root, no device node.
    assert setuid_root_files(folder) == []
    assert not any(stat.S_ISCHR(p.lstat().st_mode) or stat.S_ISBLK(p.lstat().st_mode)
                   for p in folder.rglob("*"))
    planted = folder / "rootshell"
    if planted.exists():  # copied, but as the task's own uid and without the set-uid bit
        assert planted.stat().st_uid == 65534


async def test_task_container_runs_confined_by_default(harness: Harness) -> None:
    ro = harness.tmp_path / "ro"
    ro.mkdir()
    rw = writable_by_tasks(harness.tmp_path / "rw")
    runner = await harness.runner({CLASS: busybox_class(
        mounts=[f"{ro}:/ro", f"{rw}:/rw:rw"], cap_add=["net_bind_service"])})
    tid = task_id()
    execution = asyncio.create_task(run(
        runner, "touch /ro/x 2>/dev/null && echo ro-written; touch /rw/x && echo rw-written; "
                "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; sleep 30",
        tid=tid, timeout=5))
    try:
        found = await harness.wait_running(tid)
        info = await harness.docker.containers.container(found["Id"]).show()
    finally:
        execution.cancel()
    host = info["HostConfig"]
    assert info["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["NET_BIND_SERVICE"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 1024 * MIB  # the default when a class names none
    assert host["Privileged"] is False
    assert host["Binds"] == [f"{ro}:/ro:ro", f"{rw}:/rw:rw"]
    modes = {m["Destination"]: m["RW"] for m in info["Mounts"]}
    assert modes == {"/ro": False, "/rw": True}
    outcome = await run(runner, "touch /ro/x 2>/dev/null && echo ro-written; "
                                "touch /rw/x && echo rw-written; grep CapBnd /proc/self/status")
    assert "ro-written" not in outcome.result["stdout"]
    assert "rw-written" in outcome.result["stdout"]
    # The bounding set: NET_BIND_SERVICE (bit 10) and nothing else.
    assert outcome.result["stdout"].split()[-1] == f"{1 << 10:016x}"
    assert not (ro / "x").exists() and (rw / "x").exists()


async def test_pids_limit_holds_a_fork_bomb(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(pids_limit=20)})
    outcome = await run(runner, "for i in $(seq 40); do sleep 2 & done; wait", timeout=20)
    assert "fork" in outcome.result["stderr"], outcome.result


# -- finding 4: a stored result is returned only for the same request ------------------------

async def test_a_forged_result_is_never_returned_to_the_real_request(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    forged = await run(runner, "echo forged", tid=tid)  # the attacker runs the id first
    assert forged.result["stdout"] == "forged\n"
    with pytest.raises(AlreadyExists, match="different request") as refused:
        await run(runner, "echo the real task", tid=tid)  # the orchestrator's own request
    assert "forged" not in str(refused.value)


async def test_an_empty_payload_cannot_read_a_finished_tasks_output(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    await run(runner, "echo secret-output", tid=tid)
    with pytest.raises(AlreadyExists) as refused:
        await runner.execute(tid, CLASS, {}, 0)
    assert "secret" not in str(refused.value)
    with pytest.raises(AlreadyExists):
        await run(runner, "echo secret-output", tid=tid, image="local/busybox:latest")


async def test_another_caller_cannot_take_a_task_id(harness: Harness) -> None:
    runner = await harness.runner()
    tid = task_id()
    owner, other = caller_identity("orchestrator-token"), caller_identity("someone-else")
    payload = {"command": "echo mine"}
    first = await runner.execute(tid, CLASS, payload, 0, owner)
    with pytest.raises(AlreadyExists):
        await runner.execute(tid, CLASS, payload, 0, other)
    with pytest.raises(AlreadyExists):
        await runner.execute(tid, CLASS, payload, 0)  # no token at all
    again = await runner.execute(tid, CLASS, payload, 0, owner)  # the legitimate retry
    assert again.result == {**first.result, "cached": "true"}


async def test_a_different_request_for_a_running_id_is_refused_at_once(
        harness: Harness) -> None:
    folder = writable_by_tasks(harness.tmp_path / "count")
    runner = await harness.runner({CLASS: busybox_class(mounts=[f"{folder}:/count:rw"])})
    tid = task_id()
    command = "echo ran >> /count/runs; sleep 3; echo done"
    first = asyncio.create_task(run(runner, command, tid=tid))
    await harness.wait_running(tid)
    async with asyncio.timeout(1):  # not after waiting for the run
        with pytest.raises(AlreadyExists):
            await run(runner, "echo intruder", tid=tid)
    joined = await run(runner, command, tid=tid)  # the same request joins the run
    assert (await first).result == joined.result
    assert (folder / "runs").read_text() == "ran\n"


# -- finding 9: output that is not UTF-8 is capped as it is encoded ---------------------------

FF_BOTH = ("head -c 1048576 /dev/zero | tr '\\0' '\\377'; "
           "head -c 1048576 /dev/zero | tr '\\0' '\\377' >&2")


async def test_output_is_capped_as_encoded_text(harness: Harness) -> None:
    runner = await harness.runner()  # default output_limit_bytes: 1 MiB per stream
    outcome = await run(runner, FF_BOTH)
    for stream in ("stdout", "stderr"):
        text = outcome.result[stream]
        assert set(text) == {"\ufffd"}
        assert len(text.encode()) <= MIB
        assert outcome.result[f"{stream}_truncated"] == "true"
        assert outcome.result[f"{stream}_bytes"] == str(MIB)


async def test_output_fits_the_max_message_whatever_the_limit(harness: Harness) -> None:
    runner = await harness.runner(settings=TaskSettings(output_limit_bytes=8 * MIB))
    outcome = await run(runner, FF_BOTH)
    encoded = sum(len(k.encode()) + len(v.encode()) for k, v in outcome.result.items())
    assert encoded <= 4 * MIB - 256 * 1024
    assert outcome.result["stdout_truncated"] == outcome.result["stderr_truncated"] == "true"
    assert outcome.result["stdout"] and outcome.result["stderr"]  # shared, not one starved


# -- finding 10: work whose caller has gone is stopped after a grace --------------------------

async def test_a_running_task_nobody_waits_for_is_killed_after_the_grace(
        harness: Harness) -> None:
    runner = await harness.runner(settings=TaskSettings(abandon_grace=1.0))
    tid = task_id()
    caller = asyncio.create_task(run(runner, "echo started; sleep 60", tid=tid, timeout=60))
    await harness.wait_running(tid)
    caller.cancel()  # the caller's deadline passed
    await harness.wait_gone(tid)  # killed and removed well before its 60 s
    # The container goes just after the result is stored, while the run may still be ending: the
    # first retry may attach to it; either way it gets the abandoned run's outcome, not a new run.
    retry = await run(runner, "echo started; sleep 60", tid=tid, timeout=60)
    assert retry.result["abandoned"] == "true"
    assert not retry.success and retry.error.startswith("abandoned")
    assert retry.result["stdout"] == "started\n"
    again = await run(runner, "echo started; sleep 60", tid=tid, timeout=60)
    assert again.result["cached"] == "true" and again.result["abandoned"] == "true"
    assert again.result["stdout"] == "started\n"


async def test_a_caller_back_within_the_grace_keeps_the_run(harness: Harness) -> None:
    runner = await harness.runner(settings=TaskSettings(abandon_grace=1.5))
    tid = task_id()
    command = "sleep 2.5; echo finished"
    caller = asyncio.create_task(run(runner, command, tid=tid))
    running = await harness.wait_running(tid)
    caller.cancel()
    await asyncio.sleep(0.5)
    retry = await run(runner, command, tid=tid)  # the orchestrator's retry reattaches
    assert retry.success and retry.result["stdout"] == "finished\n"
    assert retry.result["container_id"] == running["Id"]
    assert "abandoned" not in retry.result


async def test_a_queued_task_whose_caller_left_never_starts(harness: Harness) -> None:
    runner = await harness.runner({CLASS: busybox_class(concurrency=1)},
                                  TaskSettings(abandon_grace=0.5))
    busy, queued = task_id(), task_id()
    holder = asyncio.create_task(run(runner, "sleep 3", tid=busy))
    await harness.wait_running(busy)
    caller = asyncio.create_task(run(runner, "echo late", tid=queued))

    async def waiting() -> bool:
        return runner.queued(CLASS) == 1
    await eventually(waiting, "the second call to wait for a slot")
    caller.cancel()

    async def dropped() -> bool:
        return runner.queued(CLASS) == 0
    await eventually(dropped, "the abandoned call to leave the queue", timeout=5)
    assert (await holder).success
    await asyncio.sleep(0.5)
    assert await harness.task_containers(queued) == []
    # It never ran, so nothing was stored: a later call runs it.
    later = await run(runner, "echo late", tid=queued)
    assert later.result["cached"] == "false" and later.result["stdout"] == "late\n"


async def test_an_adopted_run_nobody_reattaches_to_is_stopped(harness: Harness) -> None:
    first = await harness.runner()
    tid = task_id()
    caller = asyncio.create_task(run(first, "sleep 60", tid=tid, timeout=60))
    await harness.wait_running(tid)
    await first.aclose()  # shutdown: the container is left running for the next process
    with pytest.raises(Unavailable):
        await caller
    restarted = await harness.runner(settings=TaskSettings(abandon_grace=1.0))
    assert await restarted.recover() == 1
    await harness.wait_gone(tid)  # killed and removed, not left for its 60 s
