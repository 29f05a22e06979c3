"""A sandbox's container: the one place that gets it, with the class's isolation.

A ready warm container of the class (tasks/warm.py) is taken when one fits: the sandbox asks for
the class's own image and its env can be handed over (tasks/handover.fits). Warm containers are
made by the same builder as a cold one, so the isolation is the same; the sandbox is recorded
(records.py) before the hand-over, since a warm container's labels cannot name it. Otherwise
the container is made here, cold, by the task containers' own builder
(tasks/container.container_config): the class's user, no capability but its cap_add,
no-new-privileges, its pids and memory limits, its network and (read-only unless rw) mounts.

Either way the working directory is made first (0700, owned by the class's user) and the main
process is IDLE_COMMAND, a shell that only waits (and so reaps the orphans commands leave behind,
which would otherwise pile up as zombies against the pids limit); commands come through the exec
API, which gets the sandbox's env each time (a warm container's own env is the pool's).
"""

from __future__ import annotations

from typing import Any

from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.engine import DockerEngine
from ..tasks.container import _tar, container_config, create, remove
from ..tasks.handover import fits
from ..tasks.payload import TaskSpec
from ..tasks.warm import WarmPool
from ..tasks.workloads import WorkloadClass
from .model import KIND_SANDBOX, Sandbox
from .records import Records

log = get_logger("sandboxes")

# Waits for ever; `wait` also reaps the orphans reparented to it. SIGTERM ends it at once.
IDLE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 86400 & wait; done")


def container_name(stack: str, sandbox: Sandbox) -> str:
    return f"{stack}-sandbox-{sandbox.key[:20]}"


def sandbox_config(stack: str, workload: WorkloadClass, sandbox: Sandbox) -> dict[str, Any]:
    spec = TaskSpec(
        task_id=f"sandbox-{sandbox.key[:20]}", workload_class=sandbox.workload_class,
        image=sandbox.image, command=IDLE_COMMAND, env=tuple(sandbox.env.items()), stdin=None,
        workdir=sandbox.workdir, timeout=sandbox.expires_at - sandbox.created_at,
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
            fits(IDLE_COMMAND, sandbox.env, sandbox.workdir) is None:
        warm = await pool.claim(sandbox.workload_class, sandbox.image)
        if warm is not None:
            sandbox.container_id, sandbox.warm = warm.id, True
            try:
                await records.save(sandbox)
                await _make_workdir(engine, warm.id, sandbox)
                await pool.hand_over(warm, IDLE_COMMAND, sandbox.env, sandbox.workdir)
                await warm.close_streams()
            except BaseException:
                pool.discard(warm)
                await records.delete(sandbox)
                raise
            return warm.id
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


async def _make_workdir(engine: DockerEngine, container_id: str, sandbox: Sandbox) -> None:
    uid, _, gid = sandbox.user.partition(":")
    await containers.put_archive(engine, container_id, "/",
                                 _tar((), (int(uid), int(gid or uid)), (sandbox.workdir,)))
