"""EnvManagerClient end to end against a real env-manager daemon and a real Docker engine.

Each test runs its own daemon with its own stack name and free host ports. The `em_stack` helper
always ends with StopServices (all) through the client and then removes, by the stack's label,
anything that call left, so no container outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import pytest
import trustme
from agent_infra.client import (
    ConnectionConfig,
    DeadlineExceeded,
    EnvManagerClient,
    HealthUpdate,
    InfraError,
    InfraUnavailable,
    InvalidArgument,
    LogEntry,
    NotFound,
    ResourceExhausted,
    ServiceStatusUpdate,
    Unauthenticated,
)
from agent_infra.env_manager import labels

from tests.daemon_support import (
    DaemonProcess,
    eventually,
    fetch_metrics,
    free_port,
    running_daemon,
    sample_value,
)
from tests.docker_support import TEST_IMAGE

SERVICES = ("cache", "web", "worker")
# Named by the config (a class may run it) but never built: PullImages tries it and fails.
MISSING_IMAGE = f"local/agent-infra-missing-{uuid.uuid4().hex[:8]}:latest"


def stack_config(stack: str, ports: Mapping[str, int]) -> str:
    """cache (tcp check) <- web (http check) <- worker (exec check, writes stdout and stderr)."""
    return f"""
[stack]
name = "{stack}"
max_concurrent = 4
health_timeout = "30s"

[services.cache]
image = "{TEST_IMAGE}"
command = ["httpd", "-f", "-p", "6379"]
ports = ["{ports['cache']}:6379"]
init = true
stop_grace = "2s"
healthcheck = {{ type = "tcp", port = 6379, interval = "1s" }}

[services.web]
image = "{TEST_IMAGE}"
command = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
ports = ["{ports['web']}:8080"]
init = true
stop_grace = "2s"
depends_on = {{ cache = "healthy" }}
healthcheck = {{ type = "http", port = 8080, path = "/", interval = "1s" }}

[services.worker]
image = "{TEST_IMAGE}"
command = "echo worker-out; echo worker-err >&2; touch /tmp/ready; exec sleep 1d"
init = true
stop_grace = "2s"
depends_on = {{ web = "healthy" }}
healthcheck = {{ type = "exec", command = ["test", "-f", "/tmp/ready"], interval = "1s" }}

[workload_classes.cpu_short]
image = "{TEST_IMAGE}"
allowed_images = ["{TEST_IMAGE}", "{MISSING_IMAGE}"]
concurrency = 2
default_timeout = "30s"
max_timeout = "60s"
"""


@dataclass
class Stack:
    daemon: DaemonProcess
    name: str
    ports: dict[str, int]
    client: EnvManagerClient  # connected, with the config the daemon needs


async def stack_containers(docker: aiodocker.Docker, stack: str) -> list[str]:
    found = await docker.containers.list(
        all=True, filters=labels.label_filter(**{labels.STACK: stack}))
    return [container.id for container in found]


async def remove_stack_containers(docker: aiodocker.Docker, stack: str) -> None:
    for container in await docker.containers.list(
            all=True, filters=labels.label_filter(**{labels.STACK: stack})):
        with contextlib.suppress(aiodocker.DockerError):
            await container.delete(force=True, v=True)


@contextlib.asynccontextmanager
async def em_stack(tmp_path: Path, docker: aiodocker.Docker, *, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None,
                   config: ConnectionConfig | None = None) -> AsyncIterator[Stack]:
    stack = f"c{uuid.uuid4().hex[:8]}"
    ports = {"cache": free_port(), "web": free_port()}
    config_file = tmp_path / f"{stack}.toml"
    config_file.write_text(stack_config(stack, ports))
    daemon_args = ["--config", str(config_file), "--state-dir", str(tmp_path / "state"), *args]
    try:
        async with running_daemon("env-manager", tmp_path, args=daemon_args, env=env) as daemon:
            client = EnvManagerClient(daemon.grpc_addr, config=config)
            try:
                await client.connect()
                yield Stack(daemon, stack, ports, client)
            finally:
                with contextlib.suppress(InfraError):
                    await client.stop_services(timeout_seconds=2, timeout=60)
                await client.close()
    finally:
        await remove_stack_containers(docker, stack)


async def start_all(client: EnvManagerClient) -> list[ServiceStatusUpdate]:
    return [update async for update in client.start_services(timeout=120)]


# --- the stack: start, status, logs, health, restart, stop -------------------------------------


async def test_stack_lifecycle(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with em_stack(tmp_path, docker) as stack:
        em = stack.client
        updates = await start_all(em)
        for name in SERVICES:
            statuses = [u.status for u in updates if u.service_name == name]
            assert statuses[0] == "starting", (name, statuses)
            assert statuses[-1] == "healthy", (name, statuses, updates)
        progress = [u.progress for u in updates]
        assert progress == sorted(progress), "progress never goes back"
        assert updates[-1].progress == 100
        assert all(isinstance(u, ServiceStatusUpdate) for u in updates)

        status = await em.get_services_status()
        assert set(status) == set(SERVICES)
        for name, service in status.items():
            assert service.name == name
            assert service.status == "running", service
            assert len(service.container_id) == 64
            assert service.started_at > time.time() - 300
            assert service.resource_usage is not None and service.resource_usage.memory_bytes > 0
        assert status["cache"].ports == (stack.ports["cache"],)
        assert status["web"].ports == (stack.ports["web"],)
        assert status["worker"].ports == ()
        assert status["web"].health_checks.get("healthy") == "true"
        assert set(await em.get_services_status("web")) == {"web"}  # one name, not 3 letters

        entries = [entry async for entry in em.stream_logs("worker")]
        assert {(e.stream, e.message) for e in entries} >= {("stdout", "worker-out"),
                                                           ("stderr", "worker-err")}
        assert all(isinstance(e, LogEntry) and e.service_name == "worker"
                   and e.container_id == status["worker"].container_id for e in entries)
        assert len([entry async for entry in em.stream_logs("worker", tail=1)]) == 1
        # A followed log never ends by itself: the stream honours a deadline when given one.
        followed: list[LogEntry] = []
        with pytest.raises(DeadlineExceeded):
            async for entry in em.stream_logs("worker", follow=True, timeout=1.5):
                followed.append(entry)
        assert {e.message for e in followed} >= {"worker-out", "worker-err"}

        first: dict[str, HealthUpdate] = {}
        async for health in em.stream_health(interval_seconds=1):
            first.setdefault(health.service_name, health)
            if len(first) == len(SERVICES):
                break
        assert all(h.healthy for h in first.values()), first
        assert all(h.timestamp > 0 for h in first.values())

        restarted = await em.restart_service("web", timeout_seconds=1)
        assert restarted.success, restarted
        after = await em.get_services_status(["web"])
        assert after["web"].status == "running"
        assert after["web"].container_id != status["web"].container_id

        stopped = await em.stop_services(timeout_seconds=2)
        assert stopped.success, stopped
        assert stopped.service_results == dict.fromkeys(SERVICES, "stopped")
        final = await em.get_services_status()
        assert {s.status for s in final.values()} == {"stopped"}
        assert all(s.container_id == "" and s.resource_usage is None for s in final.values())
        assert await stack_containers(docker, stack.name) == []


async def test_leaving_a_stream_early_cancels_the_call(tmp_path: Path,
                                                       docker: aiodocker.Docker) -> None:
    async with em_stack(tmp_path, docker) as stack:
        async def cancelled_streams() -> float:
            samples = (await fetch_metrics(stack.daemon)).get("grpc_server_handled", [])
            return sample_value(samples, "grpc_server_handled_total",
                                grpc_method="StreamHealth", grpc_code="Canceled")

        async for _ in stack.client.stream_health(interval_seconds=1):
            break  # the stream would run forever; dropping the iterator must end the RPC

        async def ended() -> bool:
            return await cancelled_streams() == 1
        await eventually(ended, "the server to see StreamHealth cancelled", timeout=10)


# --- tasks, capacity, images -------------------------------------------------------------------


async def test_tasks_availability_and_pulls(tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with em_stack(tmp_path, docker) as stack:
        em = stack.client
        availability = await em.get_resource_availability("cpu_short")
        assert (availability.available, availability.capacity, availability.in_use) == (
            True, 2, 0)
        assert availability.hardware.cpu_cores >= 1
        assert availability.hardware.memory_bytes > 0
        assert isinstance(availability.hardware.gpus, tuple)

        task_id = f"{stack.name}-ok"
        # Non-string payload values go as JSON: a list for command, a dict for env.
        payload = {"command": ["sh", "-c", "echo hi; echo $GREETING; cat"],
                   "env": {"GREETING": "héllo"}, "stdin": "from stdin"}
        ok = await em.execute_task(task_id, "cpu_short", payload, timeout_seconds=30)
        assert ok.success, ok
        assert (ok.exit_code, ok.stdout, ok.error) == (0, "hi\nhéllo\nfrom stdin", "")
        assert not ok.cached and ok.latency_ms > 0
        again = await em.execute_task(task_id, "cpu_short", payload, timeout_seconds=30)
        assert again.cached and again.stdout == ok.stdout  # once per task_id: safe to retry

        failed = await em.execute_task(f"{stack.name}-exit3", "cpu_short",
                                       {"command": "echo oops >&2; exit 3"})
        assert not failed.success
        assert failed.exit_code == 3
        assert "exit code 3" in failed.error
        assert failed.stderr == "oops\n"

        missing = MISSING_IMAGE  # PullImages pulls only what the config names
        pulls = [p async for p in em.pull_images([missing], timeout=120)]
        assert pulls, "a pull always ends with a complete or an error item"
        assert {p.image_name for p in pulls} == {missing}
        assert pulls[-1].status == "error", pulls
        unnamed = f"local/agent-infra-unnamed-{uuid.uuid4().hex[:8]}:latest"
        with pytest.raises(InvalidArgument, match=unnamed):
            _ = [p async for p in em.pull_images([unnamed], timeout=30)]


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_names_raise_not_found_and_invalid_argument(
        tmp_path: Path, docker: aiodocker.Docker) -> None:
    async with em_stack(tmp_path, docker) as stack:
        em = stack.client
        with pytest.raises(NotFound, match="nope") as status_error:
            await em.get_services_status(["cache", "nope"])
        assert status_error.value.code == "NOT_FOUND"
        assert status_error.value.address == stack.daemon.grpc_addr
        assert status_error.value.method == "/env_manager.v1.EnvManagerService/GetServicesStatus"
        with pytest.raises(NotFound, match="nope"):
            await em.restart_service("nope")
        with pytest.raises(NotFound, match="nope"):
            async for _ in em.start_services(["nope"]):
                pass
        with pytest.raises(NotFound, match="nope"):
            async for _ in em.stream_logs("nope"):
                pass
        with pytest.raises(NotFound, match="no container"):
            async for _ in em.stream_logs("worker"):  # known, but never started
                pass

        with pytest.raises(InvalidArgument, match="gpu_huge") as class_error:
            await em.get_resource_availability("gpu_huge")
        assert "cpu_short" in class_error.value.details  # the server names the known classes
        with pytest.raises(InvalidArgument, match="gpu_huge"):
            await em.execute_task(f"{stack.name}-x", "gpu_huge", {"command": "true"})
        with pytest.raises(InvalidArgument, match="unknown key"):
            await em.execute_task(f"{stack.name}-y", "cpu_short", {"commmand": "true"})
        # Over the daemon's 4 MiB message limit: refused, and not retried.
        with pytest.raises(ResourceExhausted, match="larger than max"):
            await em.execute_task(f"{stack.name}-z", "cpu_short",
                                  {"command": "wc -c", "stdin": "x" * (5 * 1024 * 1024)})


async def test_unreachable_address_fails_within_the_connect_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"  # bound and released: nobody listens
    config = ConnectionConfig(connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(InfraUnavailable) as error:
        async with EnvManagerClient(address, config=config):
            pass
    elapsed = time.monotonic() - began
    assert 0.9 <= elapsed < 2.5, elapsed
    assert error.value.address == address
    assert address in str(error.value) and "within 1 s" in str(error.value)

    # The first call connects too, under the same bound; so does a stream's first iteration.
    client = EnvManagerClient(address, config=config)
    began = time.monotonic()
    with pytest.raises(InfraUnavailable):
        await client.get_services_status()
    with pytest.raises(InfraUnavailable):
        async for _ in client.stream_health():
            pass
    assert time.monotonic() - began < 5.0
    await client.close()


async def test_address_from_environment(tmp_path: Path, docker: aiodocker.Docker,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with em_stack(tmp_path, docker) as stack:
        monkeypatch.setenv("ENV_MANAGER_GRPC_ADDR", stack.daemon.grpc_addr)
        async with EnvManagerClient() as em:
            assert em.address == stack.daemon.grpc_addr
            assert (await em.get_resource_availability("cpu_short")).capacity == 2


# --- token and TLS ----------------------------------------------------------------------------


async def test_bearer_token(tmp_path: Path, docker: aiodocker.Docker) -> None:
    env = {"ENV_MANAGER_AUTH_TOKEN": "s3cret"}
    async with em_stack(tmp_path, docker, env=env,
                        config=ConnectionConfig(token="s3cret")) as stack:
        assert (await stack.client.get_resource_availability("cpu_short")).capacity == 2
        with pytest.raises(NotFound):  # past authentication: the stream reached the handler
            async for _ in stack.client.stream_logs("nope"):
                pass

        for config in (None, ConnectionConfig(token="wrong")):
            async with EnvManagerClient(stack.daemon.grpc_addr, config=config) as anonymous:
                with pytest.raises(Unauthenticated, match="bearer token"):
                    await anonymous.get_resource_availability("cpu_short")
                with pytest.raises(Unauthenticated):
                    async for _ in anonymous.stream_logs("nope"):
                        pass


async def test_tls(tmp_path: Path, docker: aiodocker.Docker, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
    async with em_stack(tmp_path, docker, args=args,
                        config=ConnectionConfig(tls=True, ca_file=pki["ca"])) as stack:
        assert (await stack.client.get_resource_availability("cpu_short")).capacity == 2
        # A plaintext client, or one that does not trust the server's CA, never connects.
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        for config in (ConnectionConfig(connect_timeout=1.0),
                       ConnectionConfig(connect_timeout=1.0, ca_file=other_ca)):
            with pytest.raises(InfraUnavailable, match="within 1 s"):
                await EnvManagerClient(stack.daemon.grpc_addr, config=config).connect()


async def test_mutual_tls(tmp_path: Path, docker: aiodocker.Docker, pki: dict[str, Path]) -> None:
    args = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
            "--tls-client-ca", str(pki["ca"])]
    identified = ConnectionConfig(ca_file=pki["ca"], cert_file=pki["client_cert"],
                                  key_file=pki["client_key"])
    async with em_stack(tmp_path, docker, args=args, config=identified) as stack:
        assert (await stack.client.get_resource_availability("cpu_short")).capacity == 2
        anonymous = ConnectionConfig(ca_file=pki["ca"], connect_timeout=1.0)
        with pytest.raises(InfraUnavailable):
            async with EnvManagerClient(stack.daemon.grpc_addr, config=anonymous) as em:
                await em.get_resource_availability("cpu_short")


async def test_calls_share_one_connection_concurrently(tmp_path: Path,
                                                       docker: aiodocker.Docker) -> None:
    async with em_stack(tmp_path, docker) as stack:
        # A client not yet connected, used by many tasks at once: one channel, all answered.
        em = EnvManagerClient(stack.daemon.grpc_addr)
        try:
            results = await asyncio.gather(
                *(em.get_resource_availability("cpu_short") for _ in range(20)))
            assert {r.capacity for r in results} == {2}
        finally:
            await em.close()
