"""One task container on the engine: its configuration, running it, following one already running.

A fresh task costs what `docker run` costs: create, attach (before the start, so no output is
missed; a task with stdin attaches a second time for it), start, wait, then the removal. Output
arrives over the attach stream and is captured up to the limit while the rest is drained. A
container left by an earlier env-manager process is followed through its logs instead, since its
attach stream died with that process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.attach import STREAM_ERRORS, Attachment
from ..docker.containers import MissingImage, docker_timestamp
from ..docker.engine import DockerEngine
from ..docker.logs import Stream, follow_output
from .output import StreamCapture
from .outputs import collect
from .payload import TaskSpec
from .workloads import MIB, WorkloadClass, parse_mount

log = get_logger("tasks")

TIMEOUT_LABEL = f"{labels.PREFIX}.task-timeout"
TIMEOUT_CAPPED_LABEL = f"{labels.PREFIX}.task-timeout-capped"
# The request the container runs for (tasks/payload.request_key): a retry of the same request
# attaches to it, any other request with the task's id is refused.
REQUEST_LABEL = f"{labels.PREFIX}.task-request"
# What the result echoes besides the run's output (warnings, workflow_id, tenant), as JSON, so
# that a run adopted by a later process reports it too.
EXTRAS_LABEL = f"{labels.PREFIX}.task-extras"
# The JSON output artifacts to read back after the exit ([[name, path], ...]; tasks/outputs.py),
# so that a run adopted by a later process reads them too.
OUTPUTS_LABEL = f"{labels.PREFIX}.task-outputs"
# Output still in flight when the process has exited; past this the stream is abandoned.
DRAIN_GRACE_S = 5.0
# A killed container is gone within moments; this only guards against a wedged engine.
KILL_WAIT_S = 30.0
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NameTaken(Exception):
    """A container with the task's name exists already: the task is running or ran."""


@dataclass(frozen=True)
class RunRecord:
    container_id: str
    workload_class: str
    image: str
    exit_code: int
    stdout: StreamCapture
    stderr: StreamCapture
    started_at: float
    finished_at: float
    timed_out: bool
    timeout: float
    timeout_capped: bool
    request_key: str
    extras: tuple[tuple[str, str], ...] = ()
    outputs_summary: str | None = None  # tasks/outputs.py; None: no JSON outputs declared


def container_name(stack: str, task_id: str) -> str:
    # The hash keeps ids that sanitise alike ("a:b", "a_b") apart.
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return f"{stack}-task-{_NAME_UNSAFE.sub('_', task_id)}-{digest}"


def binds(workload: WorkloadClass) -> list[str]:
    """The class's mounts as engine binds, each with its mode spelt out (ro unless rw)."""
    return [":".join(parse_mount(mount)) for mount in workload.mounts]


def container_config(spec: TaskSpec, workload: WorkloadClass, stack: str,
                     output_limit: int) -> dict[str, Any]:
    host: dict[str, Any] = {
        "Privileged": False,
        "AutoRemove": False,  # output is collected after the exit, then we remove it
        "NetworkMode": workload.network_mode,
        "Binds": [*binds(workload), *spec.mounts],
        # No capability but the class's explicit ones; set-uid bits gain nothing.
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": workload.pids_limit,
        # A task's own limits (tasks/modes.py) are never above the class's.
        "Memory": spec.memory or workload.memory,
        # Swap as large as the memory: the limit is not doubled by swap.
        "MemorySwap": spec.memory or workload.memory,
        # The engine's default json-file log is unbounded; a chatty task must not fill the disk.
        "LogConfig": {"Type": "json-file",
                      "Config": {"max-size": str(4 * output_limit + MIB), "max-file": "2"}},
    }
    if spec.nano_cpus:
        host["NanoCpus"] = spec.nano_cpus
    elif workload.cpus is not None:
        host["NanoCpus"] = int(workload.cpus * 1e9)
    if workload.capabilities:
        host["CapAdd"] = workload.capabilities
    gpus = workload.gpus if spec.gpus is None else min(spec.gpus, workload.gpus)
    if gpus:
        host["DeviceRequests"] = [{"Driver": "", "Count": gpus, "Capabilities": [["gpu"]]}]
    with_stdin = spec.stdin is not None
    config: dict[str, Any] = {
        "Image": spec.image,
        "User": workload.user,
        "Env": [f"{key}={value}" for key, value in spec.env],
        "Labels": {
            labels.STACK: stack,
            labels.KIND: labels.KIND_TASK,
            labels.TASK_ID: spec.task_id,
            labels.WORKLOAD_CLASS: spec.workload_class,
            TIMEOUT_LABEL: repr(spec.timeout),
            TIMEOUT_CAPPED_LABEL: str(spec.timeout_capped).lower(),
            REQUEST_LABEL: spec.request_key,
            EXTRAS_LABEL: json.dumps(dict(spec.extras)),
            **({OUTPUTS_LABEL: json.dumps(spec.outputs)} if spec.outputs else {}),
        },
        "Tty": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "AttachStdin": with_stdin,
        "OpenStdin": with_stdin,
        "StdinOnce": with_stdin,  # stdin closes for good when our attach sends EOF
        "HostConfig": host,
    }
    if spec.command is not None:
        # The command is run as given, so the image's ENTRYPOINT must not prefix it.
        config["Entrypoint"] = []
        config["Cmd"] = list(spec.command)
    if spec.workdir is not None:
        config["WorkingDir"] = spec.workdir
    return config


async def create(engine: DockerEngine, config: dict[str, Any], name: str) -> str:
    """The new container's id; NameTaken when the task's container exists already."""
    try:
        container_id = await containers.create(engine, name, config)
    except MissingImage:
        raise FailedPrecondition(
            f"image {config['Image']!r} is not present on this Docker host; task images "
            "are never pulled: pull it first (PullImages)") from None
    except NotFound as exc:  # e.g. the class's network does not exist
        raise FailedPrecondition(str(exc)) from None
    if container_id is None:
        raise NameTaken(name)
    return container_id


async def inspect(engine: DockerEngine, name_or_id: str) -> dict[str, Any] | None:
    try:
        return await containers.inspect(engine, name_or_id)
    except NotFound:
        return None


async def remove(engine: DockerEngine, container_id: str) -> None:
    # FailedPrecondition: the engine refused (other than for a removal already in progress).
    with contextlib.suppress(FailedPrecondition):
        await containers.remove(engine, container_id, force=True)


async def run_attached(engine: DockerEngine, container_id: str, spec: TaskSpec,
                       output_limit: int) -> RunRecord:
    """Start the created container, feed stdin, capture output, wait (killing it at the timeout)."""
    stdout, stderr = StreamCapture(output_limit), StreamCapture(output_limit)
    output = Attachment(engine, container_id, stdin=False)
    inlet = Attachment(engine, container_id, stdin=True) if spec.stdin is not None else None
    try:
        if spec.files or spec.dirs:
            await containers.put_archive(engine, container_id, "/",
                                         _tar(spec.files, spec.file_owner, spec.dirs))
        for attachment in (output, inlet):
            if attachment is not None:
                await attachment.open()
        try:
            await containers.start(engine, container_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"the task container could not start (check payload.command "
                                  f"and payload.workdir): {exc}") from None
        started_at = time.time()
        pump = asyncio.create_task(_pump(output, stdout, stderr))
        helpers = [pump]
        if inlet is not None and spec.stdin is not None:
            helpers.append(asyncio.create_task(inlet.send_stdin(spec.stdin)))
        try:
            exit_code, timed_out = await _await_exit(engine, container_id, spec.timeout)
            finished_at = time.time()
            await _drain(pump, container_id)
        finally:
            await _cancel(helpers)
    finally:
        if inlet is not None:
            await inlet.close()
        await output.close()
    summary = await collect(engine, container_id, spec.outputs)
    return RunRecord(container_id, spec.workload_class, spec.image, exit_code, stdout, stderr,
                     started_at, finished_at, timed_out, spec.timeout, spec.timeout_capped,
                     spec.request_key, spec.extras, summary)


async def follow_existing(engine: DockerEngine, info: dict[str, Any],
                          output_limit: int) -> RunRecord:
    """Wait for a container an earlier process started, reading its output from the logs."""
    container_id = info["Id"]
    state, config_labels = info["State"], info["Config"].get("Labels") or {}
    timeout = _seconds(config_labels.get(TIMEOUT_LABEL))
    started_at = docker_timestamp(state.get("StartedAt")) or time.time()
    stdout, stderr = StreamCapture(output_limit), StreamCapture(output_limit)
    helpers = [asyncio.create_task(_pump_log(engine, container_id, "stdout", stdout)),
               asyncio.create_task(_pump_log(engine, container_id, "stderr", stderr))]
    try:
        remaining = max(0.0, started_at + timeout - time.time()) if timeout else None
        exit_code, timed_out = await _await_exit(engine, container_id, remaining)
        exited_at = time.time()
        for helper in helpers:
            await _drain(helper, container_id)
    finally:
        await _cancel(helpers)
    finished_at = docker_timestamp(state.get("FinishedAt")) if not state.get("Running") else None
    summary = await collect(engine, container_id, _outputs(config_labels.get(OUTPUTS_LABEL, "")))
    return RunRecord(container_id, config_labels.get(labels.WORKLOAD_CLASS, ""),
                     info["Config"].get("Image", ""), exit_code, stdout, stderr,
                     started_at, finished_at or exited_at, timed_out, timeout,
                     config_labels.get(TIMEOUT_CAPPED_LABEL) == "true",
                     config_labels.get(REQUEST_LABEL, ""),
                     _extras(config_labels.get(EXTRAS_LABEL, "")), summary)


async def _pump(output: Attachment, stdout: StreamCapture, stderr: StreamCapture) -> None:
    while (chunk := await output.read()) is not None:
        stream, data = chunk
        (stderr if stream == "stderr" else stdout).feed(data)


async def _pump_log(engine: DockerEngine, container_id: str, stream: Stream,
                    capture: StreamCapture) -> None:
    async for text in follow_output(engine, container_id, stream):
        capture.feed(text.encode())


async def _await_exit(engine: DockerEngine, container_id: str,
                      timeout: float | None) -> tuple[int, bool]:
    """(exit code, timed out); at the timeout (None: none) the container is killed."""
    try:
        async with asyncio.timeout(timeout):
            return await containers.wait_exit(engine, container_id), False
    except TimeoutError:
        pass
    killed = True
    try:
        await containers.kill(engine, container_id, signal="SIGKILL")
    except FailedPrecondition:
        killed = False  # it exited on its own just as the time ran out
    async with asyncio.timeout(KILL_WAIT_S):
        return await containers.wait_exit(engine, container_id), killed


async def _drain(helper: asyncio.Task[None], container_id: str) -> None:
    try:
        async with asyncio.timeout(DRAIN_GRACE_S):
            await asyncio.shield(helper)
    except TimeoutError:
        log.warning("task_output_incomplete", container_id=container_id,
                    reason=f"output still open {DRAIN_GRACE_S:g} s after the exit")
    except STREAM_ERRORS as exc:
        log.warning("task_output_incomplete", container_id=container_id, reason=str(exc))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _seconds(text: str | None) -> float:
    try:
        return max(0.0, float(text or 0))
    except ValueError:
        return 0.0


def _tar(files: tuple[tuple[str, bytes], ...], owner: tuple[int, int],
         dirs: tuple[str, ...] = ()) -> bytes:
    """A tar of `files` (absolute paths), read-only to their owner and everyone, and of `dirs`,
    private to the owner; missing parent directories are made by the engine."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in dirs:
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            info.uid, info.gid = owner
            info.mtime = int(time.time())
            archive.addfile(info)
        for path, data in files:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o444
            info.uid, info.gid = owner
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _outputs(text: str) -> tuple[tuple[str, str], ...]:
    try:
        found = json.loads(text) if text else []
    except ValueError:
        return ()
    if not isinstance(found, list):
        return ()
    return tuple((str(item[0]), str(item[1])) for item in found
                 if isinstance(item, list) and len(item) == 2)


def _extras(text: str) -> tuple[tuple[str, str], ...]:
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return ()
    if not isinstance(found, dict):
        return ()
    return tuple((str(key), str(value)) for key, value in found.items())
