"""A real env-manager with a stack of its own: unique stack name, free ports, always cleaned up."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import grpc
from agent_infra.wire import env_manager_pb2 as pb
from agent_infra.wire import env_manager_pb2_grpc

from tests.daemon_support import DaemonProcess, running_daemon
from tests.docker_support import TEST_IMAGE

STACK_LABEL = "org.agent-infra.stack"


@dataclass
class EnvManagerUnderTest:
    daemon: DaemonProcess
    stub: env_manager_pb2_grpc.EnvManagerServiceStub
    stack: str
    config: Path

    async def start(self, *names: str, parallel: bool = True,
                    overrides: dict[str, str] | None = None) -> list[pb.ServiceStatusUpdate]:
        call = self.stub.StartServices(
            pb.StartServicesRequest(service_names=names, parallel=parallel,
                                    overrides=overrides or {}), timeout=180)
        return [update async for update in call]

    async def status(self, *names: str) -> dict[str, pb.ServiceStatus]:
        response = await self.stub.GetServicesStatus(
            pb.GetServicesStatusRequest(service_names=names), timeout=60)
        return dict(response.services)


def stack_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def config_text(stack: str, services: str, *, health_timeout: str = "30s",
                max_concurrent: int = 8, pullable: Sequence[str] = ()) -> str:
    """`pullable`: more images cpu_short allows, so PullImages takes them (it takes only
    images the registry or a class names)."""
    allowed = ", ".join(f'"{image}"' for image in (TEST_IMAGE, *pullable))
    return (f'[stack]\nname = "{stack}"\nmax_concurrent = {max_concurrent}\n'
            f'health_timeout = "{health_timeout}"\n'
            f'[workload_classes.cpu_short]\nimage = "{TEST_IMAGE}"\nconcurrency = 2\n'
            f"allowed_images = [{allowed}]\n"
            f"{services}")


async def remove_stack_containers(stack: str) -> None:
    async with aiodocker.Docker() as docker:
        for container in await docker.containers.list(
            all=True, filters={"label": [f"{STACK_LABEL}={stack}"]}
        ):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)


@contextlib.asynccontextmanager
async def env_manager(tmp_path: Path, services: str, *, health_timeout: str = "30s",
                      args: Sequence[str] = ()) -> AsyncIterator[EnvManagerUnderTest]:
    """env-manager serving `services` (TOML tables) under a fresh stack name."""
    stack = stack_name()
    config = tmp_path / f"{stack}.toml"
    config.write_text(config_text(stack, services, health_timeout=health_timeout))
    try:
        async with running_daemon(
            "env-manager", tmp_path,
            args=["--config", str(config), "--state-dir", str(tmp_path / "state"), *args],
        ) as daemon:
            stub = env_manager_pb2_grpc.EnvManagerServiceStub(daemon.channel())
            yield EnvManagerUnderTest(daemon, stub, stack, config)
    finally:
        await remove_stack_containers(stack)


def busybox_service(name: str, command: str, *, depends_on: str = "", extra: str = "") -> str:
    """One [services.NAME] table running `command` in the test image, with tini as PID 1."""
    deps = f"depends_on = {{ {depends_on} }}\n" if depends_on else ""
    return (f'[services.{name}]\nimage = "{TEST_IMAGE}"\ncommand = {command!r}\ninit = true\n'
            f'stop_grace = "2s"\n{deps}{extra}\n')


def ready_after(seconds: float) -> str:
    """A command that becomes healthy (exec check on /tmp/ready) after `seconds`."""
    return f"sleep {seconds}; touch /tmp/ready; exec sleep 1d"


EXEC_READY = 'healthcheck = { type = "exec", command = ["test", "-f", "/tmp/ready"], ' \
             'interval = "1s" }\n'


async def rpc_error(awaitable: object) -> grpc.aio.AioRpcError:
    """The AioRpcError an awaited call raises (fails the test when it succeeds)."""
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded; an error was expected")
