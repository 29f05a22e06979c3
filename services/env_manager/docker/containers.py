"""Containers: create, inspect, list, start, stop, kill, wait, remove, stats and exec.

The engine calls for every container env-manager runs, services and tasks alike (the task
containers' own create body is tasks/container.py's). A service container is named
"<stack>-<service>" and labelled with the stack, the service and the spec's config hash, so a
restarted env-manager finds and adopts what it started. Nothing here pulls an image: a missing
image is MissingImage (a NotFound) and PullImages is the one place that pulls.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiodocker
from agent_infra.runtime.errors import DeadlineExceeded, FailedPrecondition, NotFound

from .. import labels
from ..registry import ServiceSpec
from .engine import DockerEngine
from .images import image_present

EXEC_OUTPUT_LIMIT = 4096
_FRACTION = re.compile(r"(\.\d{6})\d+")


class MissingImage(NotFound):
    """The image a container is to be created from is not on this host (nothing here pulls)."""

    def __init__(self, image: str) -> None:
        super().__init__(f"image {image} is not present; pull it with PullImages")
        self.image = image


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    service: str
    config_hash: str
    state: str  # Docker's own word: created, running, paused, restarting, exited, dead, ...
    running: bool
    exit_code: int | None
    started_at: int  # unix seconds; 0 if it never started
    health: str | None  # the image HEALTHCHECK's status, None without one
    host_ports: list[int]


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    memory_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int


def container_name(stack: str, service: str) -> str:
    return f"{stack}-{service}"


def docker_timestamp(text: str | None) -> float | None:
    """Unix seconds from the engine's RFC 3339 (nanosecond) timestamps; None for Docker's zero
    time ("0001-...") and for anything that is no timestamp."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return None


def docker_time(text: str | None) -> int:
    """Whole unix seconds from Docker's RFC 3339 timestamps; 0 for its zero time (or none)."""
    return max(0, int(docker_timestamp(text) or 0))


# --- create ------------------------------------------------------------------------------------


def _argv(value: list[str] | str) -> list[str]:
    # A string is Docker's "shell form": the image's /bin/sh interprets it.
    return ["/bin/sh", "-c", value] if isinstance(value, str) else list(value)


def create_config(stack: str, name: str, spec: ServiceSpec) -> dict[str, Any]:
    """The engine's container-create body for `spec`."""
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": {
            **spec.labels,
            labels.STACK: stack,
            labels.SERVICE: name,
            labels.CONFIG_HASH: spec.config_hash(),
            labels.KIND: labels.KIND_SERVICE,
        },
        "StopTimeout": math.ceil(spec.stop_grace),
    }
    if spec.command is not None:
        config["Cmd"] = _argv(spec.command)
    if spec.entrypoint is not None:
        config["Entrypoint"] = _argv(spec.entrypoint)
    if spec.user:
        config["User"] = spec.user
    if spec.working_dir:
        config["WorkingDir"] = spec.working_dir
    host: dict[str, Any] = {
        "Binds": list(spec.volumes),
        "RestartPolicy": {"Name": spec.restart},
        # Explicit either way, so a daemon-wide "init" default cannot change what a spec means.
        "Init": spec.init,
        "Privileged": False,
    }
    if spec.network_mode:
        host["NetworkMode"] = spec.network_mode
    if spec.network_mode != "host":
        # Docker drops published ports in host mode (with a warning); do not send them at all.
        exposed: dict[str, dict[str, Any]] = {}
        bindings: dict[str, list[dict[str, str]]] = {}
        for port in spec.ports:
            key = f"{port.container_port}/{port.protocol}"
            exposed[key] = {}
            bindings.setdefault(key, []).append(
                {"HostIp": port.host_ip, "HostPort": str(port.host_port)})
        config["ExposedPorts"] = exposed
        host["PortBindings"] = bindings
    resources = spec.resources
    if resources.cpus is not None:
        host["NanoCpus"] = int(resources.cpus * 1e9)
    if resources.memory is not None:
        host["Memory"] = resources.memory
    if resources.gpus is not None:
        count = -1 if resources.gpus == "all" else resources.gpus
        host["DeviceRequests"] = [{"Driver": "", "Count": count, "Capabilities": [["gpu"]]}]
    config["HostConfig"] = host
    return config


async def create_service_container(engine: DockerEngine, stack: str, name: str,
                                   spec: ServiceSpec) -> str:
    """Creates (does not start) the container for service `name`; returns its id.

    A container already holding the name is replaced only when it belongs to this stack.
    """
    if not await image_present(engine, spec.image):
        raise MissingImage(spec.image)
    config = create_config(stack, name, spec)
    cname = container_name(stack, name)
    container_id = await create(engine, cname, config)
    if container_id is None:
        await _remove_conflicting(engine, stack, cname)
        container_id = await create(engine, cname, config)
        if container_id is None:
            raise FailedPrecondition(f"container name {cname!r} is in use again right after "
                                     "it was removed; is another env-manager running this stack?")
    return container_id


async def create(engine: DockerEngine, cname: str, config: Mapping[str, Any]) -> str | None:
    """Creates (does not start) container `cname` from an engine create body: its id, or None
    when the name is taken (409). MissingImage when the body's image is not on the host."""
    async def operation() -> str | None:
        try:
            container = await engine.client.containers.create(dict(config), name=cname)
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                return None
            if exc.status == 404 and "image" in str(exc.message).lower():
                raise MissingImage(str(config["Image"])) from None
            raise
        return str(container.id)

    return await engine.call(f"create container {cname}", operation)


async def _remove_conflicting(engine: DockerEngine, stack: str, cname: str) -> None:
    try:
        info = await inspect(engine, cname)
    except NotFound:
        return  # gone in the meantime: the name is free
    owner = (info["Config"].get("Labels") or {}).get(labels.STACK)
    if owner != stack:
        raise FailedPrecondition(
            f"container name {cname!r} is taken by container {info['Id'][:12]}, which does not "
            f"belong to stack {stack!r}; remove or rename it")
    await remove(engine, str(info["Id"]), force=True)


# --- find and inspect --------------------------------------------------------------------------


async def inspect(engine: DockerEngine, ref: str) -> dict[str, Any]:
    """The engine's inspect answer for container `ref` (id or name); NotFound when there is none."""
    info = await engine.call(f"inspect container {ref}",
                             lambda: engine.client.containers.container(ref).show())
    return dict(info)


@dataclass(frozen=True)
class Listed:
    """A container as the engine's list gives it (no state details: inspect for those)."""

    id: str
    labels: dict[str, str]


async def list_containers(engine: DockerEngine, filters: Mapping[str, list[str]], *,
                          what: str) -> list[Listed]:
    """Containers matching `filters` (the engine's list filters), running or not."""
    listed = await engine.call(
        what, lambda: engine.client.containers.list(all=True, filters=dict(filters)))
    return [Listed(str(container.id), dict(container["Labels"] or {})) for container in listed]


def state_from_inspect(info: Mapping[str, Any]) -> ContainerState:
    state = info.get("State") or {}
    status = str(state.get("Status", ""))
    container_labels = (info.get("Config") or {}).get("Labels") or {}
    exited = status in ("exited", "dead", "restarting")
    health = state.get("Health") or {}
    return ContainerState(
        id=str(info["Id"]),
        name=str(info.get("Name", "")).lstrip("/"),
        service=str(container_labels.get(labels.SERVICE, "")),
        config_hash=str(container_labels.get(labels.CONFIG_HASH, "")),
        state=status,
        running=status == "running",
        exit_code=int(state.get("ExitCode", 0)) if exited else None,
        started_at=docker_time(state.get("StartedAt")),
        health=str(health["Status"]) if health.get("Status") else None,
        host_ports=_host_ports(info),
    )


def _host_ports(info: Mapping[str, Any]) -> list[int]:
    # Bound ports while it runs; the configured ones otherwise (Docker unbinds a stopped one).
    bound = (info.get("NetworkSettings") or {}).get("Ports") or {}
    configured = (info.get("HostConfig") or {}).get("PortBindings") or {}
    ports: set[int] = set()
    for bindings in (bound or configured).values():
        for binding in bindings or []:
            if str(binding.get("HostPort", "")).isdigit():
                ports.add(int(binding["HostPort"]))
    return sorted(ports)


async def inspect_state(engine: DockerEngine, container_id: str) -> ContainerState:
    return state_from_inspect(await inspect(engine, container_id))


async def find_service_containers(engine: DockerEngine, stack: str) -> dict[str, ContainerState]:
    """This stack's service containers, running or not, keyed by service name."""
    filters = labels.label_filter(**{labels.STACK: stack, labels.KIND: labels.KIND_SERVICE})
    listed = await list_containers(engine, filters, what=f"list containers of stack {stack}")
    # The list gives no start time, exit code, health or configured ports: inspect each,
    # concurrently (about 2 ms apiece here).
    states = await asyncio.gather(*(_state_of(engine, c.id) for c in listed))
    found: dict[str, ContainerState] = {}
    for state in states:
        if state is None or not state.service:
            continue
        # Two for one service (say, one renamed by hand): the one under our name is the service.
        if state.service not in found or state.name == container_name(stack, state.service):
            found[state.service] = state
    return found


async def _state_of(engine: DockerEngine, container_id: str) -> ContainerState | None:
    try:
        return await inspect_state(engine, container_id)
    except NotFound:
        return None  # removed between the list and the inspect


# --- lifecycle ---------------------------------------------------------------------------------


async def start(engine: DockerEngine, container_id: str) -> None:
    await engine.call(f"start container {container_id}",
                      lambda: engine.client.containers.container(container_id).start())


async def put_archive(engine: DockerEngine, container_id: str, path: str, tar: bytes) -> None:
    """Extracts the tar into the (created, not yet started) container at `path`."""
    await engine.call(f"put files into container {container_id}",
                      lambda: engine.client.containers.container(container_id).put_archive(
                          path, tar))  # type: ignore[no-untyped-call]


async def stop(engine: DockerEngine, container_id: str, grace_seconds: float) -> None:
    """SIGTERM (or the image's STOPSIGNAL), SIGKILL after `grace_seconds`; no-op if stopped."""
    grace = max(0, math.ceil(grace_seconds))
    await engine.call(f"stop container {container_id}",
                      lambda: engine.client.containers.container(container_id).stop(t=grace))


async def kill(engine: DockerEngine, container_id: str, signal: str | None = None) -> None:
    """Sends `signal` (None: the engine's default, SIGKILL); FailedPrecondition if not running."""
    await engine.call(f"kill container {container_id}",
                      lambda: engine.client.containers.container(container_id).kill(signal=signal))


async def remove(engine: DockerEngine, container_id: str, *, force: bool = False) -> None:
    """Removes the container and its anonymous volumes; one already gone counts as removed."""
    async def operation() -> None:
        try:
            await engine.client.containers.container(container_id).delete(force=force, v=True)
        except aiodocker.DockerError as exc:
            if exc.status == 404 or (exc.status == 409 and "in progress" in str(exc.message)):
                return
            raise

    await engine.call(f"remove container {container_id}", operation)


async def wait_exit(engine: DockerEngine, container_id: str) -> int:
    """Waits until the container is not running and returns its exit code."""
    result = await engine.call(f"wait for container {container_id}",
                               lambda: engine.client.containers.container(container_id).wait())
    return int(result.get("StatusCode", -1))


# --- stats -------------------------------------------------------------------------------------


async def resource_usage(engine: DockerEngine, container_id: str) -> Usage:
    """Live figures from one stats sample, computed as `docker stats` does.

    A non-streaming stats call on API 1.41 blocks until the engine has two samples (1-2 s),
    so precpu_stats is filled and CPU % needs one call; gather calls for many containers.
    A container that is not running answers at once with zeros.
    """
    stats = await engine.call(
        f"stats of container {container_id}",
        lambda: engine.client.containers.container(container_id).stats(stream=False))
    sample: dict[str, Any] = stats[0] if isinstance(stats, list) and stats else {}
    return usage_from_stats(sample)


def usage_from_stats(sample: Mapping[str, Any]) -> Usage:
    networks = sample.get("networks") or {}
    return Usage(
        cpu_percent=_cpu_percent(sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}),
        memory_bytes=_memory(sample.get("memory_stats") or {}),
        network_rx_bytes=sum(int(n.get("rx_bytes", 0)) for n in networks.values()),
        network_tx_bytes=sum(int(n.get("tx_bytes", 0)) for n in networks.values()),
    )


def _cpu_percent(cpu: Mapping[str, Any], pre: Mapping[str, Any]) -> float:
    usage = (cpu.get("cpu_usage") or {})
    pre_usage = (pre.get("cpu_usage") or {})
    cpu_delta = int(usage.get("total_usage", 0)) - int(pre_usage.get("total_usage", 0))
    system_delta = int(cpu.get("system_cpu_usage", 0)) - int(pre.get("system_cpu_usage", 0))
    online = int(cpu.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1)
    if not pre.get("system_cpu_usage") or cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * online * 100.0


def _memory(memory: Mapping[str, Any]) -> int:
    usage = int(memory.get("usage", 0))
    stats = memory.get("stats") or {}
    # docker stats subtracts the reclaimable page cache: total_inactive_file on cgroup v1,
    # inactive_file on v2.
    for key in ("total_inactive_file", "inactive_file"):
        if key in stats and int(stats[key]) < usage:
            return usage - int(stats[key])
    return usage


# --- exec --------------------------------------------------------------------------------------


async def exec_in(engine: DockerEngine, container_id: str, command: list[str],
                  timeout: float) -> tuple[int, str]:
    """Runs `command` in the running container: (exit code, stdout+stderr, first 4 KiB).

    DeadlineExceeded after `timeout` (the process may keep running: Docker cannot kill an
    exec); FailedPrecondition when the container is not running.
    """
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            execution = await engine.call(
                f"exec in container {container_id}",
                lambda: engine.client.containers.container(container_id).exec(
                    list(command), stdout=True, stderr=True))
            output = await _collect(engine, execution, container_id)
            code = await _exit_code(engine, execution, deadline)
    except TimeoutError:
        raise DeadlineExceeded(f"{command[0] if command else 'command'} in container "
                               f"{container_id[:12]} did not finish within {timeout:g}s") from None
    return code, output.decode("utf-8", errors="replace")


async def _collect(engine: DockerEngine, execution: Any, container_id: str) -> bytes:
    async def operation() -> bytes:
        output = bytearray()
        async with execution.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                # Keep reading past the cap so the process is never blocked on a full pipe.
                output += message.data[: max(0, EXEC_OUTPUT_LIMIT - len(output))]
        return bytes(output)

    # One attempt: starting an exec twice would run the command twice.
    return await engine.call(f"exec in container {container_id}", operation, attempts=1)


async def _exit_code(engine: DockerEngine, execution: Any, deadline: float) -> int:
    # The output can end a moment before the engine records the exit: poll briefly.
    delay = 0.005
    while True:
        info = await engine.call("inspect exec", execution.inspect)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() + delay > deadline:
            raise TimeoutError
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
