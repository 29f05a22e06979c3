"""env-manager's Docker layer against the real engine: containers, probes, logs, images.

Every test gets its own stack name; the `stack` fixture removes every container carrying that
stack's label (or the test label with the stack name, for the foreign ones a test makes itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiodocker
import pytest
import pytest_asyncio
from agent_infra.env_manager import labels
from agent_infra.env_manager.docker import containers as ctr
from agent_infra.env_manager.docker.engine import DockerEngine
from agent_infra.env_manager.docker.images import PullProgress, image_present, pull
from agent_infra.env_manager.docker.logs import LogLine, container_logs
from agent_infra.env_manager.probes import ProbeResult, probe
from agent_infra.env_manager.registry import ServiceSpec
from agent_infra.env_manager.settings import RetrySettings
from agent_infra.runtime.errors import DeadlineExceeded, FailedPrecondition, NotFound

from tests.docker_support import TEST_IMAGE, TEST_LABEL

WAIT_S = 30.0
T = TypeVar("T")


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def engine(docker: aiodocker.Docker) -> AsyncIterator[DockerEngine]:
    # `docker` first: it fails the test clearly when no engine answers.
    eng = DockerEngine(None, RetrySettings(attempts=2, initial=0.05, max=0.2))
    try:
        yield eng
    finally:
        await eng.close()


async def remove_stack_containers(docker: aiodocker.Docker, stack: str) -> None:
    found: dict[str, Any] = {}
    for label in (f"{labels.STACK}={stack}", f"{TEST_LABEL}={stack}"):
        for container in await docker.containers.list(all=True, filters={"label": [label]}):
            found[container.id] = container
    for container in found.values():
        with contextlib.suppress(aiodocker.DockerError):
            await container.delete(force=True, v=True)


@pytest_asyncio.fixture
async def stack(docker: aiodocker.Docker) -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        await remove_stack_containers(docker, name)


def spec(command: list[str] | str | None = None, **fields: Any) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {"image": TEST_IMAGE, "command": command, "stop_grace": 1, **fields})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(engine: DockerEngine, stack: str, name: str, service: ServiceSpec) -> str:
    container_id = await ctr.create_service_container(engine, stack, name, service)
    await ctr.start(engine, container_id)
    return container_id


async def eventually(check: Callable[[], Awaitable[T]], done: Callable[[T], bool],
                     timeout: float = WAIT_S) -> T:
    """Polls `check` until `done` holds for its result; fails with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout}s; last: {result!r}")
        await asyncio.sleep(0.05)


async def probe_until(engine: DockerEngine, service: ServiceSpec, container_id: str,
                      healthy: bool) -> ProbeResult:
    async def check() -> ProbeResult:
        return await probe(engine, service, await ctr.inspect_state(engine, container_id))
    return await eventually(check, lambda r: r.healthy is healthy)


async def collect_logs(engine: DockerEngine, container_id: str, **options: Any) -> list[LogLine]:
    options = {"follow": False, "tail": 0, "since": 0, **options}
    async with asyncio.timeout(WAIT_S):
        return [line async for line in container_logs(engine, container_id, **options)]


# --- containers --------------------------------------------------------------------------------


async def test_round_trip_with_labels_and_config_hash(engine: DockerEngine, stack: str,
                                                      docker: aiodocker.Docker) -> None:
    service = spec("sleep 300", env={"GREETING": "hi"}, labels={"team": "infra"},
                   ports=[f"{free_port()}:8080"], working_dir="/tmp", user="nobody",
                   resources={"cpus": 0.5, "memory": "64m"}, restart="on-failure", init=True)
    container_id = await ctr.create_service_container(engine, stack, "web", service)

    info = await docker.containers.container(container_id).show()
    assert info["Name"] == f"/{stack}-web"
    assert info["Config"]["Labels"] == {
        "org.agent-infra.image": "test",  # the image's own label
        "team": "infra", labels.STACK: stack, labels.SERVICE: "web",
        labels.CONFIG_HASH: service.config_hash(), labels.KIND: labels.KIND_SERVICE}
    assert "GREETING=hi" in info["Config"]["Env"]
    assert info["Config"]["Cmd"] == ["/bin/sh", "-c", "sleep 300"]
    assert (info["Config"]["WorkingDir"], info["Config"]["User"]) == ("/tmp", "nobody")
    assert info["Config"]["StopTimeout"] == 1
    host = info["HostConfig"]
    assert host["Privileged"] is False and host["Init"] is True
    assert host["RestartPolicy"]["Name"] == "on-failure"
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 64 * 1024**2)

    found = await ctr.find_service_containers(engine, stack)
    assert list(found) == ["web"]
    created = found["web"]
    assert (created.id, created.state, created.running, created.started_at) == (
        container_id, "created", False, 0)
    assert created.config_hash == service.config_hash()

    before = int(time.time())
    await ctr.start(engine, container_id)
    running = (await ctr.find_service_containers(engine, stack))["web"]
    assert running.running and running.state == "running" and running.exit_code is None
    assert before - 1 <= running.started_at <= int(time.time())
    assert running.host_ports == [service.ports[0].host_port]
    assert running.name == f"{stack}-web" and running.service == "web"
    assert await ctr.inspect_state(engine, container_id) == running

    await ctr.stop(engine, container_id, grace_seconds=1)
    stopped = await ctr.inspect_state(engine, container_id)
    # 143 = SIGTERM: with init the signal reaches sleep (as PID 1 the shell would ignore it).
    assert (stopped.state, stopped.running, stopped.exit_code) == ("exited", False, 143)

    await ctr.remove(engine, container_id)
    assert await ctr.find_service_containers(engine, stack) == {}
    await ctr.remove(engine, container_id)  # already gone: still fine


async def test_find_ignores_other_stacks_and_task_containers(
        engine: DockerEngine, stack: str, docker: aiodocker.Docker) -> None:
    await ctr.create_service_container(engine, stack, "a", spec("true"))
    await ctr.create_service_container(engine, f"{stack}x", "b", spec(
        "true", labels={TEST_LABEL: stack}))
    await docker.containers.create({"Image": TEST_IMAGE, "Cmd": ["true"], "Labels": {
        labels.STACK: stack, labels.KIND: labels.KIND_TASK, labels.SERVICE: "task"}})
    assert list(await ctr.find_service_containers(engine, stack)) == ["a"]


async def test_ports_are_bound_to_loopback_only(engine: DockerEngine, stack: str,
                                                docker: aiodocker.Docker) -> None:
    port = free_port()
    container_id = await run(engine, stack, "web", spec("sleep 300", ports=[f"{port}:8080"]))
    info = await docker.containers.container(container_id).show()
    assert info["NetworkSettings"]["Ports"]["8080/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert info["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"


async def test_string_command_runs_in_the_shell_and_list_as_is(
        engine: DockerEngine, stack: str) -> None:
    shell = await run(engine, stack, "shell", spec('echo "a-$((1+2))"; exit 4'))
    plain = await run(engine, stack, "plain", spec(["echo", "$((1+2))"]))
    async with asyncio.timeout(WAIT_S):
        assert await ctr.wait_exit(engine, shell) == 4
        assert await ctr.wait_exit(engine, plain) == 0
    assert [line.message for line in await collect_logs(engine, shell)] == ["a-3"]
    assert [line.message for line in await collect_logs(engine, plain)] == ["$((1+2))"]


async def test_name_conflict_with_a_foreign_container_fails(
        engine: DockerEngine, stack: str, docker: aiodocker.Docker) -> None:
    foreign = await docker.containers.create(
        {"Image": TEST_IMAGE, "Cmd": ["true"], "Labels": {TEST_LABEL: stack}},
        name=ctr.container_name(stack, "web"))
    with pytest.raises(FailedPrecondition, match=f"{stack}-web.*{foreign.id[:12]}"):
        await ctr.create_service_container(engine, stack, "web", spec("true"))
    assert (await foreign.show())["Id"] == foreign.id  # left alone


async def test_own_stale_container_with_the_name_is_replaced(
        engine: DockerEngine, stack: str) -> None:
    old = await run(engine, stack, "web", spec("sleep 300"))
    new = await ctr.create_service_container(engine, stack, "web", spec("sleep 301"))
    assert new != old
    with pytest.raises(NotFound):
        await ctr.inspect_state(engine, old)
    assert (await ctr.find_service_containers(engine, stack))["web"].id == new


async def test_missing_image_is_not_found_and_never_pulled(engine: DockerEngine,
                                                           stack: str) -> None:
    image = f"registry.invalid/agent-infra/missing:{stack}"
    with pytest.raises(NotFound, match=f"image {image} is not present; pull it with PullImages"):
        await ctr.create_service_container(engine, stack, "web", spec("true", image=image))
    assert await ctr.find_service_containers(engine, stack) == {}


async def test_resource_usage_of_a_busy_container(engine: DockerEngine, stack: str) -> None:
    busy = await run(engine, stack, "busy", spec("while :; do :; done"))
    # The engine may have no sample for a container that has only just started (zeros):
    # wait for the first real one.
    usage = await eventually(lambda: ctr.resource_usage(engine, busy),
                             lambda u: u.cpu_percent > 20.0)
    # One core spinning: about 100 (of up to 100 x online cores), as docker stats shows it.
    assert usage.cpu_percent <= 100.0 * (os.cpu_count() or 1) + 5
    assert 0 < usage.memory_bytes < 256 * 1024**2
    assert usage.network_rx_bytes >= 0 and usage.network_tx_bytes >= 0

    idle = await ctr.create_service_container(engine, stack, "idle", spec("true"))
    started = time.monotonic()
    assert await ctr.resource_usage(engine, idle) == ctr.Usage(0.0, 0, 0, 0)
    assert time.monotonic() - started < 1.0  # a stopped container answers at once


async def test_exec_in(engine: DockerEngine, stack: str) -> None:
    container_id = await run(engine, stack, "box", spec("sleep 300"))
    code, output = await ctr.exec_in(
        engine, container_id, ["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    # stdout and stderr are separate pipes: their relative order is not kept.
    assert (code, sorted(output.splitlines())) == (3, ["err", "out"])
    code, output = await ctr.exec_in(
        engine, container_id, ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"], timeout=10)
    assert (code, output) == (0, "x" * ctr.EXEC_OUTPUT_LIMIT)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"within 0\.5s"):
        await ctr.exec_in(engine, container_id, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 3

    await ctr.stop(engine, container_id, grace_seconds=0)
    with pytest.raises(FailedPrecondition, match="not running"):
        await ctr.exec_in(engine, container_id, ["true"], timeout=5)


# --- probes ------------------------------------------------------------------------------------


async def test_tcp_probe(engine: DockerEngine, stack: str) -> None:
    check = {"type": "tcp", "port": 8080, "timeout": 1}
    server = spec("nc -ll -p 8080 -e cat", ports=[f"{free_port()}:8080"], healthcheck=check)
    server_id = await run(engine, stack, "server", server)
    result = await probe_until(engine, server, server_id, healthy=True)
    port = server.ports[0].host_port
    assert result.details["type"] == "tcp"
    assert result.details["target"] == f"127.0.0.1:{port}"
    assert int(result.details["latency_ms"]) >= 0

    # Docker's port proxy accepts connections even with nothing listening behind it.
    silent = spec("sleep 300", ports=[f"{free_port()}:8080"], healthcheck=check)
    silent_id = await run(engine, stack, "silent", silent)
    result = await probe(engine, silent, await ctr.inspect_state(engine, silent_id))
    assert not result.healthy
    assert "nothing listens on container port 8080" in result.message


async def test_http_probe(engine: DockerEngine, stack: str) -> None:
    command = "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www"
    port = free_port()
    good = spec(command, ports=[f"{port}:8080"],
                healthcheck={"type": "http", "port": 8080, "path": "/index.html"})
    container_id = await run(engine, stack, "web", good)
    result = await probe_until(engine, good, container_id, healthy=True)
    assert result.details == {"type": "http", "target": f"http://127.0.0.1:{port}/index.html",
                              "latency_ms": result.details["latency_ms"], "http_status": "200"}

    missing = spec(command, ports=[f"{port}:8080"],
                   healthcheck={"type": "http", "port": 8080, "path": "/missing"})
    result = await probe(engine, missing, await ctr.inspect_state(engine, container_id))
    assert not result.healthy and result.details["http_status"] == "404"
    assert "HTTP 404" in result.message


async def test_exec_probe(engine: DockerEngine, stack: str) -> None:
    service = spec("sleep 300", healthcheck={"type": "exec", "command": ["test", "-f",
                                                                         "/tmp/ready"]})
    container_id = await run(engine, stack, "box", service)
    result = await probe(engine, service, await ctr.inspect_state(engine, container_id))
    assert not result.healthy and result.details["exit_code"] == "1"
    await ctr.exec_in(engine, container_id, ["touch", "/tmp/ready"], timeout=10)
    result = await probe(engine, service, await ctr.inspect_state(engine, container_id))
    assert result.healthy and result.details["exit_code"] == "0"
    assert result.details["target"] == "test -f /tmp/ready"


@pytest_asyncio.fixture
async def health_image(docker: aiodocker.Docker, stack: str) -> AsyncIterator[str]:
    """TEST_IMAGE plus a HEALTHCHECK (`test -f /tmp/ready`, every 100 ms)."""
    tag = f"local/agent-infra-test-health:{stack}"
    base = await docker.containers.create(
        {"Image": TEST_IMAGE, "Cmd": ["true"], "Labels": {TEST_LABEL: stack}})
    # The commit API takes a config to merge, Healthcheck included (docker import -c cannot).
    await base.commit(repository=tag.split(":")[0], tag=stack, config={"Healthcheck": {
        "Test": ["CMD", "test", "-f", "/tmp/ready"], "Interval": 100_000_000,
        "Timeout": 1_000_000_000, "Retries": 1}})
    await base.delete(force=True)
    try:
        yield tag
    finally:
        await remove_stack_containers(docker, stack)  # an image in use cannot be deleted
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(tag, force=True)


async def test_docker_healthcheck_probe(engine: DockerEngine, stack: str,
                                        health_image: str) -> None:
    service = spec("sleep 300", image=health_image, healthcheck={"type": "docker"})
    container_id = await run(engine, stack, "box", service)
    result = await probe(engine, service, await ctr.inspect_state(engine, container_id))
    assert not result.healthy
    assert result.details["docker_health"] in ("starting", "unhealthy")
    await ctr.exec_in(engine, container_id, ["touch", "/tmp/ready"], timeout=10)
    result = await probe_until(engine, service, container_id, healthy=True)
    assert result.message == "docker health status: healthy"

    plain = spec("sleep 300", healthcheck={"type": "docker"})
    plain_id = await run(engine, stack, "plain", plain)
    result = await probe(engine, plain, await ctr.inspect_state(engine, plain_id))
    assert not result.healthy and result.message == "the image defines no HEALTHCHECK"


async def test_probe_of_a_stopped_container_reports_its_exit_code(engine: DockerEngine,
                                                                  stack: str) -> None:
    service = spec("exit 7", healthcheck={"type": "exec", "command": ["true"]})
    container_id = await run(engine, stack, "box", service)
    async with asyncio.timeout(WAIT_S):
        assert await ctr.wait_exit(engine, container_id) == 7
    result = await probe(engine, service, await ctr.inspect_state(engine, container_id))
    assert not result.healthy
    assert result.message == "container is exited (exit code 7)"
    assert result.details["exit_code"] == "7"


async def test_probe_without_healthcheck_is_running(engine: DockerEngine, stack: str) -> None:
    service = spec("sleep 300")
    container_id = await run(engine, stack, "box", service)
    assert (await probe(engine, service, await ctr.inspect_state(engine, container_id))).healthy


# --- logs --------------------------------------------------------------------------------------


async def test_logs_tell_stdout_from_stderr(engine: DockerEngine, stack: str) -> None:
    container_id = await run(engine, stack, "box", spec("echo o1; echo e1 >&2; echo o2"))
    async with asyncio.timeout(WAIT_S):
        await ctr.wait_exit(engine, container_id)
    lines = await collect_logs(engine, container_id)
    # Docker copies the two pipes concurrently, so only the order within a stream is kept.
    assert [line.message for line in lines if line.stream == "stdout"] == ["o1", "o2"]
    assert [line.message for line in lines if line.stream == "stderr"] == ["e1"]
    assert len(lines) == 3
    now = int(time.time())
    assert all(now - 60 <= line.timestamp <= now for line in lines)


async def test_logs_tail_and_since(engine: DockerEngine, stack: str) -> None:
    command = "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo late"
    container_id = await run(engine, stack, "box", spec(command))
    async with asyncio.timeout(WAIT_S):
        await ctr.wait_exit(engine, container_id)
    everything = await collect_logs(engine, container_id)
    assert [line.message for line in everything] == [
        "line1", "line2", "line3", "line4", "line5", "late"]
    tail = await collect_logs(engine, container_id, tail=2)
    assert [line.message for line in tail] == ["line5", "late"]
    # `sleep 1` puts "late" at least one whole second after line1.
    since = await collect_logs(engine, container_id, since=everything[0].timestamp + 1)
    assert [line.message for line in since] == ["late"]


async def test_follow_ends_when_the_container_stops(engine: DockerEngine, stack: str) -> None:
    command = "echo start; while [ ! -f /tmp/stop ]; do sleep 0.05; done; echo done >&2"
    container_id = await run(engine, stack, "box", spec(command))
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(WAIT_S):
        async for line in container_logs(engine, container_id, follow=True, tail=0, since=0):
            seen.append((line.stream, line.message))
            if line.message == "start":
                await ctr.exec_in(engine, container_id, ["touch", "/tmp/stop"], timeout=10)
    assert seen == [("stdout", "start"), ("stderr", "done")]


async def test_follow_stops_cleanly_when_the_consumer_leaves(engine: DockerEngine,
                                                              stack: str) -> None:
    container_id = await run(engine, stack, "box", spec("while :; do echo tick; sleep 0.05; done"))
    stream = container_logs(engine, container_id, follow=True, tail=0, since=0)
    async with asyncio.timeout(WAIT_S):
        assert (await anext(stream)).message == "tick"
        await stream.aclose()

    reading = asyncio.Event()

    async def consume() -> None:
        async for _ in container_logs(engine, container_id, follow=True, tail=0, since=0):
            reading.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT_S):
        await reading.wait()
    task.cancel()
    async with asyncio.timeout(5):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()
    # Both streams are gone: the connection pool holds no open responses.
    connector = engine.client.session.connector
    assert connector is not None and not connector._acquired


async def test_logs_of_a_tty_container_are_stdout(engine: DockerEngine, stack: str,
                                                  docker: aiodocker.Docker) -> None:
    container = await docker.containers.create({
        "Image": TEST_IMAGE, "Cmd": ["sh", "-c", "echo a; echo b >&2"], "Tty": True,
        "Labels": {TEST_LABEL: stack}})
    await container.start()
    async with asyncio.timeout(WAIT_S):
        await container.wait()
    lines = await collect_logs(engine, container.id)
    assert [(line.stream, line.message) for line in lines] == [
        ("stdout", "a"), ("stdout", "b")]


async def test_logs_of_an_unknown_container_are_not_found(engine: DockerEngine) -> None:
    with pytest.raises(NotFound):
        await collect_logs(engine, f"agent-infra-missing-{uuid.uuid4().hex[:8]}")


# --- images ------------------------------------------------------------------------------------


async def collect_pull(engine: DockerEngine, image: str, **options: Any) -> list[PullProgress]:
    async with asyncio.timeout(WAIT_S):
        return [item async for item in pull(engine, image, **options)]


@pytest.mark.parametrize("image", ["registry.invalid/agent-infra/nope:1",
                                   "docker.io/library/busybox:latest"])
async def test_pull_without_a_registry_is_one_error_item(engine: DockerEngine,
                                                         image: str) -> None:
    started = time.monotonic()
    items = await collect_pull(engine, image)
    assert time.monotonic() - started < 5
    assert len(items) == 1
    assert items[0].status == "error" and items[0].image == image
    host = image.split("/")[0].replace("docker.io", "registry-1.docker.io")
    assert host in items[0].message
    assert not await image_present(engine, image)


async def test_pull_from_a_registry_that_never_answers_is_bounded(engine: DockerEngine) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, then say nothing

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        items = await collect_pull(engine, f"127.0.0.1:{port}/agent-infra/hang:1",
                                   stall_timeout=1.0)
        assert time.monotonic() - started < 4
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
    assert [item.status for item in items] == ["error"]
    assert "made no progress for 1s" in items[0].message


async def test_image_present(engine: DockerEngine) -> None:
    assert await image_present(engine, TEST_IMAGE)
    assert not await image_present(engine, f"local/agent-infra-absent:{uuid.uuid4().hex[:8]}")


@pytest.fixture
def registry_port(tmp_path: Path) -> Iterator[int]:
    """A real registry (Debian's docker-registry) on loopback, storing into tmp_path."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: scripts/bootstrap.sh installs it")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not come up on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_pull_from_a_local_registry(engine: DockerEngine, docker: aiodocker.Docker,
                                          stack: str, registry_port: int) -> None:
    repository = f"127.0.0.1:{registry_port}/agent-infra-test"
    image = f"{repository}:{stack}"
    # A layer of random bytes no local image has, so the pull really downloads it.
    base = await docker.containers.create({
        "Image": TEST_IMAGE, "Cmd": ["sh", "-c", "head -c 3000000 /dev/urandom > /blob"],
        "Labels": {TEST_LABEL: stack}})
    try:
        await base.start()
        async with asyncio.timeout(WAIT_S):
            await base.wait()
            await base.commit(repository=repository, tag=stack)
            await docker.images.push(repository, tag=stack)
        await docker.images.delete(image)
        assert not await image_present(engine, image)

        items = await collect_pull(engine, image)
        statuses = [item.status for item in items]
        assert statuses[0] == "downloading" and statuses[-1] == "complete"
        assert statuses.count("complete") == 1 and "error" not in statuses
        assert set(statuses) <= {"downloading", "extracting", "complete"}
        largest = max(item.total for item in items)
        assert 3_000_000 <= largest < 4_000_000
        assert items[-1].percent == 100 and items[-1].current == items[-1].total == largest
        percents = [item.percent for item in items if item.status == "downloading"]
        assert all(0 <= p <= 100 for p in percents)
        assert "Downloaded newer image" in items[-1].message
        assert await image_present(engine, image)
    finally:
        await base.delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(image, force=True)


def test_create_config_for_host_network_and_gpus() -> None:
    service = spec(["serve"], entrypoint="exec /app", network_mode="host", ports=["8080:8080"],
                   resources={"gpus": "all"}, volumes=["data:/data", "/srv/x:/x:ro"])
    config = ctr.create_config("s", "web", service)
    assert config["Entrypoint"] == ["/bin/sh", "-c", "exec /app"]
    assert config["Cmd"] == ["serve"]
    host = config["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert "PortBindings" not in host and "ExposedPorts" not in config
    assert host["Binds"] == ["data:/data", "/srv/x:/x:ro"]
    assert host["DeviceRequests"] == [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]
    assert host["Privileged"] is False and "Healthcheck" not in config
    two = spec(["serve"], resources={"gpus": 2}, healthcheck={"type": "docker"})
    requests = ctr.create_config("s", "web", two)["HostConfig"]["DeviceRequests"]
    assert requests[0]["Count"] == 2
    assert "Healthcheck" not in ctr.create_config("s", "web", two)
