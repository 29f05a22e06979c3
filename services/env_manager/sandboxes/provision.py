"""A sandbox's container: the one place that gets it, with the class's isolation.

A ready warm container of the class (tasks/warm.py) is taken when one fits: the sandbox asks for
the class's own image and its env can be handed over (tasks/handover.fits). Warm containers are
made by the same builder as a cold one, so the isolation is the same; the sandbox is recorded
(records.py) before the hand-over, since a warm container's labels cannot name it. Otherwise
the container is made here, cold, by the task containers' own builder
(tasks/container.container_config): the class's user, no capability but its cap_add,
no-new-privileges, its pids and memory limits, its network and (read-only unless rw) mounts.

Either way the main process is the command loop (loop.py): it makes the working directory as the
class's user (`mkdir -m 700`; the default, /tmp/sandbox, is in the world-writable /tmp) and says
on stdout whether it could, then serves commands sent on its stdin, which env-manager keeps
attached with its output (fast.py), and waits (reaping orphans, which would otherwise pile up as
zombies against the pids limit) once that stdin ends. A sandbox is ready once that line is read
back from the container's attached stdout; when the directory cannot be made so (a workdir
outside /tmp), it is made through the engine's archive API, as it always is before a cold
container starts (the archive API costs a helper process in the engine, tens of ms: the warm
way avoids it). The loop's secret is sent on its stdin after the start (warm: after the
hand-over). When the loop never says it is ready, the sandbox has no fast channel and its
commands come through the exec API, which gets the sandbox's env each time (a warm container's
own env is the pool's; the loop has the sandbox's, exported by the hand-over).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.attach import STREAM_ERRORS, Attachment
from ..docker.engine import DockerEngine
from ..tasks.container import _tar, container_config, create, remove
from ..tasks.handover import fits
from ..tasks.payload import TaskSpec
from ..tasks.warm import WarmContainer, WarmPool
from ..tasks.workloads import WorkloadClass
from .fast import FastChannel
from .loop import loop_command, secret_line
from .model import KIND_SANDBOX, Sandbox
from .records import Records

log = get_logger("sandboxes")

READY_TIMEOUT = 10.0
_READY_LIMIT = 64 * 1024
_WRITE_ERRORS: tuple[type[Exception], ...] = (*STREAM_ERRORS, RuntimeError)


def container_name(stack: str, sandbox: Sandbox) -> str:
    return f"{stack}-sandbox-{sandbox.key[:20]}"


def sandbox_config(stack: str, workload: WorkloadClass, sandbox: Sandbox,
                   mark: str) -> dict[str, Any]:
    spec = TaskSpec(
        task_id=f"sandbox-{sandbox.key[:20]}", workload_class=sandbox.workload_class,
        image=sandbox.image, command=loop_command(sandbox.workdir, mark),
        env=tuple(sandbox.env.items()), stdin=None, workdir=None,
        timeout=sandbox.expires_at - sandbox.created_at,
        timeout_capped=False)
    config = container_config(spec, workload, stack, workload.sandbox.output_limit_bytes)
    config["Labels"] = {labels.STACK: stack, labels.KIND: KIND_SANDBOX,
                        labels.WORKLOAD_CLASS: sandbox.workload_class, **sandbox.labels()}
    # The loop's stdin stays open while env-manager's attach does (StdinOnce: closed with it).
    for key in ("AttachStdin", "AttachStdout", "AttachStderr", "OpenStdin", "StdinOnce"):
        config[key] = True
    # Attached, never logged: execs' output never reaches the container log.
    config["HostConfig"]["LogConfig"] = {"Type": "none", "Config": {}}
    return config


async def provision(engine: DockerEngine, stack: str, workload: WorkloadClass,
                    sandbox: Sandbox, pool: WarmPool | None,
                    records: Records) -> tuple[str, FastChannel | None]:
    """The sandbox's started container (its id; `sandbox.warm` says which way it came) and the
    fast channel to its loop (None: it never said it was ready; execs take the exec way).
    FailedPrecondition for an image missing on the host (never pulled) or a network that does
    not exist."""
    if pool is not None and sandbox.image == workload.image and \
            fits(loop_command(sandbox.workdir, "x"), sandbox.env, None) is None:
        warm = await pool.claim(sandbox.workload_class, sandbox.image)
        if warm is not None:
            channel = await _hand_over(engine, pool, warm, sandbox, records)
            if channel is not None:
                return warm.id, channel
    sandbox.warm = False
    mark = secrets.token_hex(16)
    container_id = await create(engine, sandbox_config(stack, workload, sandbox, mark),
                                container_name(stack, sandbox))
    output = Attachment(engine, container_id, stdin=False)
    inlet = Attachment(engine, container_id, stdin=True)
    secret = FastChannel.new_secret()
    try:
        await _make_workdir(engine, container_id, sandbox)
        for attachment in (output, inlet):
            await attachment.open()
        await containers.start(engine, container_id)
        with contextlib.suppress(*_WRITE_ERRORS):
            await inlet.write(secret_line(secret))
        made = await _ready(output, mark)
    except BaseException:
        await _close(output, inlet)
        await remove(engine, container_id)
        raise
    if made is None:
        log.warning("sandbox_loop_not_ready", container_id=container_id[:12])
        await _close(output, inlet)
        return container_id, None
    return container_id, FastChannel(container_id, output, inlet, secret)


async def _hand_over(engine: DockerEngine, pool: WarmPool, warm: WarmContainer,
                     sandbox: Sandbox, records: Records) -> FastChannel | None:
    """Make the claimed warm container the sandbox: the channel to its loop; None (it is
    discarded) when its stub did not start the loop."""
    sandbox.container_id, sandbox.warm = warm.id, True
    mark = secrets.token_hex(16)
    secret = FastChannel.new_secret()
    try:
        await records.save(sandbox)  # before the hand-over: a restart must know it
        try:
            # stdin stays open: it carries the loop's frames.
            await pool.hand_over(warm, loop_command(sandbox.workdir, mark), sandbox.env, None,
                                 secret_line(secret), keep_stdin_open=True)
            made = await _ready(warm.output, mark)
        except _WRITE_ERRORS:
            made = None
        if made is None:
            log.warning("sandbox_warm_refused", container_id=warm.id[:12])
            pool.discard(warm)
            await records.delete(sandbox)
            return None
        if not made:
            await _make_workdir(engine, warm.id, sandbox)
    except BaseException:
        pool.discard(warm)
        await records.delete(sandbox)
        raise
    return FastChannel(warm.id, warm.output, warm.inlet, secret)


async def _close(*attachments: Attachment) -> None:
    for attachment in attachments:
        with contextlib.suppress(Exception):
            await attachment.close()


async def _ready(output: Attachment, mark: str) -> bool | None:
    """Whether the loop made the working directory; None when it never said."""
    text = b""
    needle = mark.encode() + b" "
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while len(text) < _READY_LIMIT and (chunk := await output.read()) is not None:
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
