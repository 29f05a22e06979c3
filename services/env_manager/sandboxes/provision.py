"""A sandbox's container: the one place that gets it, with the class's isolation.

A ready warm container of the class (tasks/warm.py) is taken when one fits: the sandbox asks for
the class's own image and its env can be handed over (tasks/handover.fits). Warm containers are
made by the same builder as a cold one, so the isolation is the same; the sandbox is recorded
(records.py) before the hand-over, since a warm container's labels cannot name it. Otherwise
the container is made here, cold, by the task containers' own builder
(tasks/container.container_config): the class's user, no capability but its cap_add,
no-new-privileges, its pids and memory limits, its network and (read-only unless rw) mounts.

Either way the main process is the idle script below: it makes the working directory as the
class's user (`mkdir -m 700`; the default, /tmp/sandbox, is in the world-writable /tmp) and says
on stdout whether it could, then only waits (and so reaps the orphans commands leave behind, which
would otherwise pile up as zombies against the pids limit). A warm sandbox is ready once that line
is read back from the container's attached stdout; when the directory cannot be made so (a
workdir outside /tmp), it is made through the engine's archive API, as it always is before a cold
container starts (the archive API costs a helper process in the engine, tens of ms: the warm way
avoids it). Commands come through the exec API, which gets the sandbox's env each time (a warm
container's own env is the pool's).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.attach import STREAM_ERRORS
from ..docker.engine import DockerEngine
from ..tasks.container import _tar, container_config, create, remove
from ..tasks.handover import fits
from ..tasks.payload import TaskSpec
from ..tasks.warm import WarmContainer, WarmPool
from ..tasks.workloads import WorkloadClass
from .model import KIND_SANDBOX, Sandbox
from .records import Records

log = get_logger("sandboxes")

# $1: the working directory, $2: a mark. Says "<mark> 0" when the directory is ours, then waits
# for ever; `wait` also reaps the orphans reparented to it. SIGTERM ends it at once.
IDLE_SCRIPT = ('mkdir -p -m 700 -- "$1" 2>/dev/null; [ -d "$1" ] && [ -w "$1" ]; '
               'printf "%s %s\\n" "$2" "$?"; '
               "trap 'exit 0' TERM; while :; do sleep 86400 & wait; done")
READY_TIMEOUT = 10.0
_READY_LIMIT = 64 * 1024


def idle_command(workdir: str, mark: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", IDLE_SCRIPT, "agent-infra-sandbox", workdir, mark)


def container_name(stack: str, sandbox: Sandbox) -> str:
    return f"{stack}-sandbox-{sandbox.key[:20]}"


def sandbox_config(stack: str, workload: WorkloadClass, sandbox: Sandbox) -> dict[str, Any]:
    spec = TaskSpec(
        task_id=f"sandbox-{sandbox.key[:20]}", workload_class=sandbox.workload_class,
        image=sandbox.image, command=idle_command(sandbox.workdir, "cold"),
        env=tuple(sandbox.env.items()), stdin=None, workdir=None,
        timeout=sandbox.expires_at - sandbox.created_at,
        timeout_capped=False)
    config = container_config(spec, workload, stack, workload.sandbox.output_limit_bytes)
    config["Labels"] = {labels.STACK: stack, labels.KIND: KIND_SANDBOX,
                        labels.WORKLOAD_CLASS: sandbox.workload_class, **sandbox.labels()}
    config["AttachStdout"] = config["AttachStderr"] = False
    # The idle process logs nothing; execs' output never reaches the container log.
    config["HostConfig"]["LogConfig"] = {"Type": "none", "Config": {}}
    return config


async def provision(engine: DockerEngine, stack: str, workload: WorkloadClass,
                    sandbox: Sandbox, pool: WarmPool | None, records: Records) -> str:
    """The sandbox's started container (its id; `sandbox.warm` says which way it came).
    FailedPrecondition for an image missing on the host (never pulled) or a network that does
    not exist."""
    if pool is not None and sandbox.image == workload.image and \
            fits(idle_command(sandbox.workdir, "x"), sandbox.env, None) is None:
        warm = await pool.claim(sandbox.workload_class, sandbox.image)
        if warm is not None and await _hand_over(engine, pool, warm, sandbox, records):
            return warm.id
    sandbox.warm = False
    sandbox.warm = False
    container_id = await create(engine, sandbox_config(stack, workload, sandbox),
                                container_name(stack, sandbox))
    try:
        await _make_workdir(engine, container_id, sandbox)
        await containers.start(engine, container_id)
    except BaseException:
        await remove(engine, container_id)
        raise
    return container_id


async def _hand_over(engine: DockerEngine, pool: WarmPool, warm: WarmContainer,
                     sandbox: Sandbox, records: Records) -> bool:
    """Make the claimed warm container the sandbox; False (it is discarded) when its stub
    did not start the idle script."""
    sandbox.container_id, sandbox.warm = warm.id, True
    mark = secrets.token_hex(16)
    try:
        await records.save(sandbox)  # before the hand-over: a restart must know it
        await pool.hand_over(warm, idle_command(sandbox.workdir, mark), sandbox.env, None)
        made = await _ready(warm, mark)
        if made is None:
            log.warning("sandbox_warm_refused", container_id=warm.id[:12])
            pool.discard(warm)
            await records.delete(sandbox)
            return False
        await warm.close_streams()
        if not made:
            await _make_workdir(engine, warm.id, sandbox)
    except BaseException:
        pool.discard(warm)
        await records.delete(sandbox)
        raise
    return True


async def _ready(warm: WarmContainer, mark: str) -> bool | None:
    """Whether the idle script made the working directory; None when it never said."""
    text = b""
    needle = mark.encode() + b" "
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while len(text) < _READY_LIMIT and (chunk := await warm.output.read()) is not None:
                if chunk[0] != "stdout":
                    continue
                text += chunk[1]
                at = text.find(needle)
                end = text.find(b"\n", at) if at >= 0 else -1
                if end >= 0:
                    return text[at + len(needle):end] == b"0"
    except TimeoutError:
        pass
    except STREAM_ERRORS:
        pass
    return None


async def _make_workdir(engine: DockerEngine, container_id: str, sandbox: Sandbox) -> None:
    uid, _, gid = sandbox.user.partition(":")
    await containers.put_archive(engine, container_id, "/",
                                 _tar((), (int(uid), int(gid or uid)), (sandbox.workdir,)))
