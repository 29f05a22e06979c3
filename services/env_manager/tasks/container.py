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
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from agent_infra.runtime.logs import get_logger
from aiodocker.containers import DockerContainer
from aiodocker.stream import Stream
from yarl import URL

from .. import labels
from ..docker.engine import DockerEngine
from .output import StreamCapture
from .payload import TaskSpec
from .workloads import MIB, WorkloadClass

log = get_logger("tasks")

TIMEOUT_LABEL = f"{labels.PREFIX}.task-timeout"
TIMEOUT_CAPPED_LABEL = f"{labels.PREFIX}.task-timeout-capped"
# Output still in flight when the process has exited; past this the stream is abandoned.
DRAIN_GRACE_S = 5.0
# A killed container is gone within moments; this only guards against a wedged engine.
KILL_WAIT_S = 30.0
STDERR = 2
STDIN_CHUNK = 64 * 1024
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_FRACTION = re.compile(r"(\.\d{6})\d+")


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


def container_name(stack: str, task_id: str) -> str:
    # The hash keeps ids that sanitise alike ("a:b", "a_b") apart.
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return f"{stack}-task-{_NAME_UNSAFE.sub('_', task_id)}-{digest}"


def container_config(spec: TaskSpec, workload: WorkloadClass, stack: str,
                     output_limit: int) -> dict[str, Any]:
    host: dict[str, Any] = {
        "Privileged": False,
        "AutoRemove": False,  # output is collected after the exit, then we remove it
        "NetworkMode": workload.network_mode,
        "Binds": list(workload.mounts),
        "SecurityOpt": ["no-new-privileges"],
        # The engine's default json-file log is unbounded; a chatty task must not fill the disk.
        "LogConfig": {"Type": "json-file",
                      "Config": {"max-size": str(4 * output_limit + MIB), "max-file": "2"}},
    }
    if workload.cpus is not None:
        host["NanoCpus"] = int(workload.cpus * 1e9)
    if workload.memory is not None:
        host["Memory"] = workload.memory
    if workload.gpus:
        host["DeviceRequests"] = [{"Driver": "", "Count": workload.gpus,
                                   "Capabilities": [["gpu"]]}]
    with_stdin = spec.stdin is not None
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env],
        "Labels": {
            labels.STACK: stack,
            labels.KIND: labels.KIND_TASK,
            labels.TASK_ID: spec.task_id,
            labels.WORKLOAD_CLASS: spec.workload_class,
            TIMEOUT_LABEL: repr(spec.timeout),
            TIMEOUT_CAPPED_LABEL: str(spec.timeout_capped).lower(),
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

    async def operation() -> DockerContainer:
        try:
            return await engine.client.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                raise NameTaken(name) from None
            if exc.status == 404 and "image" in str(exc.message).lower():
                raise FailedPrecondition(
                    f"image {config['Image']!r} is not present on this Docker host; task images "
                    "are never pulled: pull it first (PullImages)") from None
            raise

    try:
        container = await engine.call("create task container", operation)
    except NotFound as exc:  # e.g. the class's network does not exist
        raise FailedPrecondition(str(exc)) from None
    return container.id


async def inspect(engine: DockerEngine, name_or_id: str) -> dict[str, Any] | None:
    try:
        return await engine.call("inspect task container",
                                 engine.client.containers.container(name_or_id).show)
    except NotFound:
        return None


async def remove(engine: DockerEngine, container_id: str) -> None:
    # NotFound: gone already; FailedPrecondition: its removal is in progress.
    with contextlib.suppress(NotFound, FailedPrecondition):
        await engine.call("remove task container", lambda: engine.client.containers.container(
            container_id).delete(force=True, v=True))


async def run_attached(engine: DockerEngine, container_id: str, spec: TaskSpec,
                       output_limit: int) -> RunRecord:
    """Start the created container, feed stdin, capture output, wait (killing it at the timeout)."""
    container = engine.client.containers.container(container_id)
    stdout, stderr = StreamCapture(output_limit), StreamCapture(output_limit)
    # Connected before the start, so not a byte is missed. Stdin has its own connection: the
    # engine ends an attach only once its stdin is at EOF, so output sharing one with stdin would
    # wait for all the stdin a process never read.
    output = _attach(engine.client, container_id, stdin=False)
    inlet = _attach(engine.client, container_id, stdin=True) if spec.stdin is not None else None
    try:
        for stream in (output, inlet):
            if stream is not None:
                await engine.call("attach to task container", stream.__aenter__)
        try:
            await engine.call("start task container", container.start)
        except InvalidArgument as exc:
            raise InvalidArgument(f"the task container could not start (check payload.command "
                                  f"and payload.workdir): {exc}") from None
        started_at = time.time()
        pump = asyncio.create_task(_pump(output, stdout, stderr))
        helpers = [pump]
        if inlet is not None and spec.stdin is not None:
            helpers.append(asyncio.create_task(_feed(inlet, spec.stdin)))
        try:
            exit_code, timed_out = await _await_exit(engine, container, spec.timeout)
            finished_at = time.time()
            await _drain(pump, container_id)
        finally:
            await _cancel(helpers)
    finally:
        if inlet is not None:
            # Stdin the process never read would keep a graceful close waiting for ever.
            transport = _transport(inlet)
            await inlet.close()
            if transport is not None:
                transport.abort()
        await output.close()
    return RunRecord(container_id, spec.workload_class, spec.image, exit_code, stdout, stderr,
                     started_at, finished_at, timed_out, spec.timeout, spec.timeout_capped)


async def follow_existing(engine: DockerEngine, info: dict[str, Any],
                          output_limit: int) -> RunRecord:
    """Wait for a container an earlier process started, reading its output from the logs."""
    container = engine.client.containers.container(info["Id"])
    state, config_labels = info["State"], info["Config"].get("Labels") or {}
    timeout = _seconds(config_labels.get(TIMEOUT_LABEL))
    started_at = _docker_time(state.get("StartedAt")) or time.time()
    stdout, stderr = StreamCapture(output_limit), StreamCapture(output_limit)
    helpers = [asyncio.create_task(_pump_log(container, "stdout", stdout)),
               asyncio.create_task(_pump_log(container, "stderr", stderr))]
    try:
        remaining = max(0.0, started_at + timeout - time.time()) if timeout else None
        exit_code, timed_out = await _await_exit(engine, container, remaining)
        exited_at = time.time()
        for helper in helpers:
            await _drain(helper, info["Id"])
    finally:
        await _cancel(helpers)
    finished_at = _docker_time(state.get("FinishedAt")) if not state.get("Running") else None
    return RunRecord(info["Id"], config_labels.get(labels.WORKLOAD_CLASS, ""),
                     info["Config"].get("Image", ""), exit_code, stdout, stderr,
                     started_at, finished_at or exited_at, timed_out, timeout,
                     config_labels.get(TIMEOUT_CAPPED_LABEL) == "true")


def _attach(client: aiodocker.Docker, container_id: str, *, stdin: bool) -> Stream:
    """An attach to the container's stdin alone, or to its stdout and stderr."""
    # aiodocker's own attach() inspects the container first (a round trip per task) only to learn
    # whether it has a tty; ours never does. Empty detachKeys: stdin bytes are never taken as a
    # detach sequence.
    query: dict[str, str | int] = {"stream": 1, "stdout": int(not stdin),
                                   "stderr": int(not stdin), "stdin": int(stdin), "logs": 0,
                                   "detachKeys": ""}

    async def setup() -> tuple[URL, bytes | None, bool]:
        return URL(f"containers/{container_id}/attach").with_query(query), None, False

    return Stream(client, setup)


async def _pump(stream: Stream, stdout: StreamCapture, stderr: StreamCapture) -> None:
    while (message := await stream.read_out()) is not None:
        (stderr if message.stream == STDERR else stdout).feed(message.data)


async def _pump_log(container: DockerContainer, which: str, capture: StreamCapture) -> None:
    lines: AsyncIterator[str] = container.log(follow=True, **{which: True})
    async for text in lines:
        capture.feed(text.encode())


async def _feed(stream: Stream, data: bytes) -> None:
    try:
        # In chunks, so the transport never holds much more than the engine has taken.
        for start in range(0, len(data), STDIN_CHUNK):
            await stream.write_in(data[start:start + STDIN_CHUNK])
        _close_stdin(stream)
    except (aiohttp.ClientError, OSError, RuntimeError):
        pass  # the process exited without reading all of its stdin


def _close_stdin(stream: Stream) -> None:
    # aiodocker's Stream.close() would drop the whole connection, output included; a half-close
    # is what the engine reads as the end of stdin.
    transport = _transport(stream)
    if transport is not None and transport.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()


def _transport(stream: Stream) -> asyncio.Transport | None:
    response = stream._resp
    connection = response.connection if response is not None else None
    transport = connection.transport if connection is not None else None
    return transport if isinstance(transport, asyncio.Transport) else None


async def _await_exit(engine: DockerEngine, container: DockerContainer,
                      timeout: float | None) -> tuple[int, bool]:
    """(exit code, timed out); at the timeout (None: none) the container is killed."""
    try:
        async with asyncio.timeout(timeout):
            status = await engine.call("wait for task container", container.wait)
        return int(status["StatusCode"]), False
    except TimeoutError:
        pass
    killed = True
    try:
        await engine.call("kill timed-out task container",
                          lambda: container.kill(signal="SIGKILL"))
    except FailedPrecondition:
        killed = False  # it exited on its own just as the time ran out
    async with asyncio.timeout(KILL_WAIT_S):
        status = await engine.call("wait for killed task container", container.wait)
    return int(status["StatusCode"]), killed


async def _drain(helper: asyncio.Task[None], container_id: str) -> None:
    try:
        async with asyncio.timeout(DRAIN_GRACE_S):
            await asyncio.shield(helper)
    except TimeoutError:
        log.warning("task_output_incomplete", container_id=container_id,
                    reason=f"output still open {DRAIN_GRACE_S:g} s after the exit")
    except (aiohttp.ClientError, OSError, aiodocker.DockerError) as exc:
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


def _docker_time(text: str | None) -> float | None:
    """Unix seconds from the engine's RFC 3339 nanosecond timestamps; None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return None
