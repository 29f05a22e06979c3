"""A sandbox's container: the one place that makes it, with the class's isolation.

The container is built by the task containers' own builder (tasks/container.container_config):
the class's user, no capability but its cap_add, no-new-privileges, its pids and memory limits,
its network and (read-only unless rw) mounts. Its main process only idles; commands come
through the exec API. The working directory is made first, 0700 and owned by the class's user.
"""

from __future__ import annotations

from typing import Any

from agent_infra.runtime.errors import FailedPrecondition

from .. import labels
from ..docker import containers
from ..docker.engine import DockerEngine
from ..tasks.container import _tar, container_config, create, remove
from ..tasks.payload import TaskSpec
from ..tasks.workloads import WorkloadClass
from .model import KIND_SANDBOX, Sandbox

# Idles for ever (68 years) in any image with `sleep`; the exec API runs the commands.
IDLE_COMMAND = ("sleep", "2147483647")


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
    # An init as PID 1 reaps what commands leave behind (orphans of background jobs), which
    # would otherwise pile up as zombies against the pids limit.
    config["HostConfig"]["Init"] = True
    # The idle process logs nothing; execs' output never reaches the container log.
    config["HostConfig"]["LogConfig"] = {"Type": "none", "Config": {}}
    return config


async def provision(engine: DockerEngine, stack: str, workload: WorkloadClass,
                    sandbox: Sandbox) -> str:
    """Create and start the sandbox's container; its id. FailedPrecondition for an image missing
    on the host (never pulled) or a network that does not exist."""
    name = container_name(stack, sandbox)
    container_id = await create(engine, sandbox_config(stack, workload, sandbox), name)
    try:
        uid, _, gid = sandbox.user.partition(":")
        await containers.put_archive(engine, container_id, "/",
                                     _tar((), (int(uid), int(gid or uid)), (sandbox.workdir,)))
        await containers.start(engine, container_id)
    except BaseException:
        await remove(engine, container_id)
        raise
    return container_id


def check_started(info: dict[str, Any] | None) -> None:
    if info is None or not (info.get("State") or {}).get("Running"):
        raise FailedPrecondition("the sandbox's container is not running")
