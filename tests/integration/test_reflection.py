"""Server reflection as the original stack's tools used it: by the original file names, through
`grpc.reflection.v1` as well as `v1alpha`, and with descriptors that carry json_name (grpcurl
prints `taskId`, as it did against the original Go server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from tests.daemon_support import DaemonProcess, running_daemon
from tests.integration.test_daemon_surface import grpcurl

FILES = {"env-manager": ("env_manager.v1.proto", "env_manager.v1", "EnvManagerService"),
         "orchestrator": ("orchestrator.v1.proto", "orchestrator.v1", "OrchestratorService")}
VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")


@pytest_asyncio.fixture(params=sorted(FILES))
async def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    async with running_daemon(request.param, tmp_path) as started:
        yield started


async def reflect(channel: grpc.aio.Channel, version: str,
                  *requests: rpb.ServerReflectionRequest) -> list[rpb.ServerReflectionResponse]:
    """A raw reflection client: v1 and v1alpha messages are the same bytes on the wire."""
    call = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return [response async for response in call(iter(requests), timeout=30)]


def files_of(
    response: rpb.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    return {file.name: file for file in files}


def field(file: descriptor_pb2.FileDescriptorProto, message: str,
          name: str) -> descriptor_pb2.FieldDescriptorProto:
    found = next(m for m in file.message_type if m.name == message)
    return next(f for f in found.field if f.name == name)


@pytest.mark.parametrize("version", VERSIONS)
async def test_file_by_original_file_name(daemon: DaemonProcess, version: str) -> None:
    file_name, package, service = FILES[daemon.name]
    [response] = await reflect(daemon.channel(), version,
                               rpb.ServerReflectionRequest(file_by_filename=file_name))
    files = files_of(response)
    assert file_name in files, sorted(files)
    file = files[file_name]
    assert file.package == package
    assert [s.name for s in file.service] == [service]
    # Every field carries its json_name, computed as protoc does.
    for message in file.message_type:
        for each in message.field:
            assert each.json_name, f"{message.name}.{each.name} has no json_name"
    if daemon.name == "orchestrator":
        assert field(file, "GetTaskStatusRequest", "task_id").json_name == "taskId"
        assert field(file, "SubmitTaskRequest", "workflow_id").json_name == "workflowId"
        assert field(file, "SubmitTaskRequest", "class").json_name == "class"
    else:
        assert field(file, "ServiceStatus", "container_id").json_name == "containerId"


@pytest.mark.parametrize("version", VERSIONS)
async def test_symbol_lookup_names_the_original_file(daemon: DaemonProcess, version: str) -> None:
    file_name, package, service = FILES[daemon.name]
    [by_symbol, listed, missing] = await reflect(
        daemon.channel(), version,
        rpb.ServerReflectionRequest(file_containing_symbol=f"{package}.{service}"),
        rpb.ServerReflectionRequest(list_services=""),
        rpb.ServerReflectionRequest(file_by_filename=file_name.replace(".v1", "")),
    )
    assert file_name in files_of(by_symbol)
    names = {s.name for s in listed.list_services_response.service}
    assert names >= {f"{package}.{service}", "grpc.health.v1.Health", *(
        f"{v}.ServerReflection" for v in VERSIONS)}
    # The old, non-original file name is not served.
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_v1_reflection_describes_itself(tmp_path: Path) -> None:
    async with running_daemon("orchestrator", tmp_path) as daemon:
        [response] = await reflect(daemon.channel(), "grpc.reflection.v1",
                                   rpb.ServerReflectionRequest(
                                       file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    file = files_of(response)["grpc/reflection/v1/reflection.proto"]
    assert file.package == "grpc.reflection.v1"
    [method] = file.service[0].method
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse")
    assert field(file, "ServerReflectionRequest", "file_by_filename").json_name == "fileByFilename"


async def _grpcurl_json(daemon: DaemonProcess, method: str, body: dict[str, object],
                        extra: Sequence[str] = ()) -> dict[str, object]:
    code, output = await grpcurl("-plaintext", *extra, "-d", json.dumps(body), daemon.grpc_addr,
                                 f"orchestrator.v1.OrchestratorService/{method}")
    assert code == 0, output
    decoded: dict[str, object] = json.loads(output)
    return decoded


async def test_grpcurl_speaks_lower_camel_case_json(tmp_path: Path) -> None:
    async with running_daemon("orchestrator", tmp_path) as daemon:
        submitted = await _grpcurl_json(daemon, "SubmitTask", {
            "id": "reflect-json-1", "class": "cpu_short", "payload": {"command": "true"}})
        assert submitted.get("taskId") == "reflect-json-1", submitted
        assert "task_id" not in submitted
        # The original's JSON names are accepted in requests too.
        status = await _grpcurl_json(daemon, "GetTaskStatus", {"taskId": "reflect-json-1"})
        assert status.get("taskId") == "reflect-json-1", status
        code, output = await grpcurl("-plaintext", daemon.grpc_addr, "describe",
                                     "orchestrator.v1.GetTaskStatusRequest")
    assert code == 0, output
    assert "string task_id = 1" in output, output


SANDBOX_RPCS = ("CreateSandbox", "SandboxExec", "PutFile", "GetFile", "ListSandboxes",
                "DeleteSandbox")


async def test_grpcurl_lists_the_sandbox_rpcs(daemon: DaemonProcess) -> None:
    """Issue 13's sandbox sessions show in reflection on both daemons, SandboxExec streaming."""
    _, package, service = FILES[daemon.name]
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "list", f"{package}.{service}")
    assert code == 0, output
    assert set(output.split()) >= {f"{package}.{service}.{rpc}" for rpc in SANDBOX_RPCS}
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "describe",
                                 f"{package}.{service}")
    assert code == 0, output
    assert (f"rpc SandboxExec ( .{package}.SandboxExecRequest ) returns "
            f"( stream .{package}.SandboxExecOutput );") in output, output


async def test_grpcurl_describes_a_single_method(daemon: DaemonProcess) -> None:
    """`grpcurl describe pkg.Service.Method` resolves the method's file, as Go's reflection
    does (protobuf's Python pool knows no method symbols on its own)."""
    _, package, service = FILES[daemon.name]
    method = f"{package}.{service}.SandboxExec"
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "describe", method)
    assert code == 0, output
    assert f"{method} is a method" in output, output
    assert "returns ( stream" in output, output
    code, output = await grpcurl("-plaintext", daemon.grpc_addr, "describe",
                                 f"{package}.{service}.NoSuchMethod")
    assert code != 0 and "not found" in output.lower(), output
