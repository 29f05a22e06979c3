"""env-manager's RPCs as an attacker would call them (issue 10, findings 2, 4, 9), on a real
daemon: callers cannot change what the registry says a service is, pull what the config does not
name, take over a task id another caller used, or make a result too big to deliver."""

from __future__ import annotations

from pathlib import Path

import aiodocker
import grpc
import pytest
from agent_infra.wire import env_manager_pb2 as pb

from tests.env_support import STACK_LABEL, busybox_service, env_manager, rpc_error

pytestmark = pytest.mark.docker

SERVICES = (
    busybox_service("svc", "exec sleep 1d", extra='overridable = ["env.MODE"]\n')
    + busybox_service("net", "exec sleep 1d", extra='overridable = ["network_mode"]\n')
    # Large enough that only the response-level cap can keep the answer deliverable.
    + "[tasks]\noutput_limit_bytes = 8388608\n"
)


async def stack_containers(stack: str) -> list[object]:
    async with aiodocker.Docker() as docker:
        return list(await docker.containers.list(
            all=True, filters={"label": [f"{STACK_LABEL}={stack}"]}))


@pytest.mark.parametrize("key, value", [
    ("svc.image", "local/busybox:latest"),
    ("svc.user", "0"),
    ("svc.command", '["sh", "-c", "id"]'),
    ("svc.entrypoint", "sh"),
    ("svc.restart", "always"),
    ("svc.env.OTHER", "x"),
    ("svc.network_mode", "host"),
    ("net.image", "local/busybox:latest"),
])
async def test_overrides_the_registry_does_not_allow_are_refused(
        tmp_path: Path, key: str, value: str) -> None:
    async with env_manager(tmp_path, SERVICES) as em:
        error = await rpc_error(em.stub.StartServices(
            pb.StartServicesRequest(overrides={key: value}), timeout=30).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        service, _, field = key.partition(".")
        details = error.details() or ""
        assert f"service {service!r}" in details and repr(field) in details, details
        assert await stack_containers(em.stack) == []


async def test_network_mode_outside_the_registrys_is_refused(tmp_path: Path) -> None:
    async with env_manager(tmp_path, SERVICES) as em:
        for mode in ("host", "container:someone-else", "bridge"):
            error = await rpc_error(em.stub.StartServices(
                pb.StartServicesRequest(service_names=["net"],
                                        overrides={"net.network_mode": mode}),
                timeout=30).read())
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "network_mode" in (error.details() or "") and mode in (error.details() or "")
        assert await stack_containers(em.stack) == []
        # What the registry allows still works.
        updates = await em.start("svc", overrides={"svc.env.MODE": "fast"})
        assert updates[-1].status == "healthy", updates


async def test_pull_images_takes_only_configured_images(tmp_path: Path) -> None:
    async with env_manager(tmp_path, SERVICES) as em:
        call = em.stub.PullImages(pb.PullImagesRequest(
            image_names=["local/busybox:latest", "attacker.example/root-shell:latest"]),
            timeout=30)
        error = await rpc_error(call.read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "attacker.example/root-shell:latest" in (error.details() or "")


FF_BOTH = ("head -c 1048576 /dev/zero | tr '\\0' '\\377'; "
           "head -c 1048576 /dev/zero | tr '\\0' '\\377' >&2")


async def test_output_that_is_not_utf8_is_delivered_truncated(tmp_path: Path) -> None:
    async with env_manager(tmp_path, SERVICES) as em:
        request = pb.ExecuteTaskRequest(task_id="ff-both", workload_class="cpu_short",
                                        payload={"command": FF_BOTH})
        answer = await em.stub.ExecuteTask(request, timeout=120)
        assert answer.success, answer.error
        assert answer.ByteSize() <= 4 * 1024 * 1024
        assert answer.result["stdout_truncated"] == answer.result["stderr_truncated"] == "true"
        assert answer.result["stdout_bytes"] == answer.result["stderr_bytes"] == "1048576"
        # The retry (the result is stored) is delivered too.
        again = await em.stub.ExecuteTask(request, timeout=60)
        assert again.result["cached"] == "true" and again.result["stdout"]


async def test_a_task_id_is_bound_to_the_callers_token(tmp_path: Path) -> None:
    async with env_manager(tmp_path, SERVICES) as em:
        request = pb.ExecuteTaskRequest(task_id="bound", workload_class="cpu_short",
                                        payload={"command": "echo mine"})
        owner = (("authorization", "Bearer owner-token"),)
        first = await em.stub.ExecuteTask(request, metadata=owner, timeout=60)
        assert first.result["stdout"] == "mine\n"
        for metadata in ((), (("authorization", "Bearer another-token"),)):
            error = await rpc_error(em.stub.ExecuteTask(request, metadata=metadata, timeout=60))
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "mine" not in (error.details() or "")
        empty = pb.ExecuteTaskRequest(task_id="bound", workload_class="cpu_short")
        error = await rpc_error(em.stub.ExecuteTask(empty, metadata=owner, timeout=60))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        again = await em.stub.ExecuteTask(request, metadata=owner, timeout=60)
        assert again.result["cached"] == "true" and again.result["stdout"] == "mine\n"
