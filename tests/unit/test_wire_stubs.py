"""The committed stubs in services/wire match proto/, and proto/ matches the wire API facts.

The wire API (shared/WIRE-API.md) is what clients of the original stack speak: every package,
service, RPC, message, field name, field number and type must stay as it was. The tables below are
transcribed by hand from that document on purpose, so that a rename, renumbering or retyping in
proto/*.proto fails here instead of breaking a client in the field. Additions (new RPCs, messages,
fields with new numbers) are allowed by the wire API and are not flagged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from agent_infra.wire import (
    env_manager_pb2,
    env_manager_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

ROOT = Path(__file__).resolve().parents[2]
WIRE_DIR = ROOT / "services" / "wire"
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.py"
STALE = "services/wire is stale: run python scripts/gen_proto.py"

# Field tables: message -> field name -> (field number, type). Types are written as in the wire API:
# a scalar ("string", "int64", ...), a message name of the same package, "repeated T", or
# "map<K,V>".
Fields = dict[str, tuple[int, str]]
# Method tables: RPC -> (request message, response message, server streaming).
Methods = dict[str, tuple[str, str, bool]]

ENV_MANAGER_MESSAGES: dict[str, Fields] = {
    "StartServicesRequest": {
        "service_names": (1, "repeated string"),
        "parallel": (2, "bool"),
        "overrides": (3, "map<string,string>"),
    },
    "ServiceStatusUpdate": {
        "service_name": (1, "string"),
        "status": (2, "string"),
        "message": (3, "string"),
        "progress": (4, "int32"),
    },
    "StopServicesRequest": {
        "service_names": (1, "repeated string"),
        "timeout_seconds": (2, "int32"),
    },
    "StopServicesResponse": {
        "success": (1, "bool"),
        "service_results": (2, "map<string,string>"),
    },
    "RestartServiceRequest": {
        "service_name": (1, "string"),
        "timeout_seconds": (2, "int32"),
    },
    "RestartServiceResponse": {
        "success": (1, "bool"),
        "message": (2, "string"),
    },
    "GetServicesStatusRequest": {
        "service_names": (1, "repeated string"),
    },
    "ServicesStatusResponse": {
        "services": (1, "map<string,ServiceStatus>"),
    },
    "ServiceStatus": {
        "name": (1, "string"),
        "status": (2, "string"),
        "container_id": (3, "string"),
        "ports": (4, "repeated int32"),
        "health_checks": (5, "map<string,string>"),
        "started_at": (6, "int64"),
        "resource_usage": (7, "ResourceUsage"),
    },
    "ResourceUsage": {
        "cpu_percent": (1, "double"),
        "memory_bytes": (2, "int64"),
        "network_rx_bytes": (3, "int64"),
        "network_tx_bytes": (4, "int64"),
    },
    "StreamHealthRequest": {
        "service_names": (1, "repeated string"),
        "interval_seconds": (2, "int32"),
    },
    "HealthUpdate": {
        "service_name": (1, "string"),
        "healthy": (2, "bool"),
        "message": (3, "string"),
        "timestamp": (4, "int64"),
        "details": (5, "map<string,string>"),
    },
    "GetResourceAvailabilityRequest": {
        "workload_class": (1, "string"),
    },
    "ResourceAvailabilityResponse": {
        "available": (1, "bool"),
        "capacity": (2, "int32"),
        "in_use": (3, "int32"),
        "hardware": (4, "HardwareInfo"),
    },
    "HardwareInfo": {
        "cpu_cores": (1, "int32"),
        "memory_bytes": (2, "int64"),
        "gpus": (3, "repeated GPU"),
    },
    "GPU": {
        "index": (1, "int32"),
        "name": (2, "string"),
        "memory_bytes": (3, "int64"),
        "utilization_percent": (4, "double"),
    },
    "ExecuteTaskRequest": {
        "task_id": (1, "string"),
        "workload_class": (2, "string"),
        "payload": (3, "map<string,string>"),
        "timeout_seconds": (4, "int32"),
    },
    "ExecuteTaskResponse": {
        "success": (1, "bool"),
        "result": (2, "map<string,string>"),
        "error": (3, "string"),
        "latency_ms": (4, "double"),
    },
    "PullImagesRequest": {
        "image_names": (1, "repeated string"),
    },
    "ImagePullProgress": {
        "image_name": (1, "string"),
        "status": (2, "string"),
        "current": (3, "int64"),
        "total": (4, "int64"),
        "progress_percent": (5, "int32"),
    },
    "StreamLogsRequest": {
        "service_name": (1, "string"),
        "follow": (2, "bool"),
        "tail": (3, "int32"),
        "since_timestamp": (4, "int64"),
    },
    "LogEntry": {
        "service_name": (1, "string"),
        "container_id": (2, "string"),
        "stream": (3, "string"),
        "message": (4, "string"),
        "timestamp": (5, "int64"),
    },
}

ENV_MANAGER_METHODS: Methods = {
    "StartServices": ("StartServicesRequest", "ServiceStatusUpdate", True),
    "StopServices": ("StopServicesRequest", "StopServicesResponse", False),
    "RestartService": ("RestartServiceRequest", "RestartServiceResponse", False),
    "GetServicesStatus": ("GetServicesStatusRequest", "ServicesStatusResponse", False),
    "StreamHealth": ("StreamHealthRequest", "HealthUpdate", True),
    "GetResourceAvailability": (
        "GetResourceAvailabilityRequest",
        "ResourceAvailabilityResponse",
        False,
    ),
    "ExecuteTask": ("ExecuteTaskRequest", "ExecuteTaskResponse", False),
    "PullImages": ("PullImagesRequest", "ImagePullProgress", True),
    "StreamLogs": ("StreamLogsRequest", "LogEntry", True),
}

ORCHESTRATOR_MESSAGES: dict[str, Fields] = {
    "SubmitTaskRequest": {
        "id": (1, "string"),
        "class": (2, "string"),
        "payload": (3, "map<string,string>"),
        "priority": (4, "int32"),
        "workflow_id": (5, "string"),
    },
    "SubmitTaskResponse": {
        "success": (1, "bool"),
        "task_id": (2, "string"),
        "error": (3, "string"),
    },
    "StreamTaskResultsRequest": {
        "task_ids": (1, "repeated string"),
        "include_completed": (2, "bool"),
    },
    "TaskResult": {
        "task_id": (1, "string"),
        "status": (2, "string"),
        "result": (3, "map<string,string>"),
        "error": (4, "string"),
        "duration_ms": (5, "double"),
        "completed_at": (6, "int64"),
    },
    "GetTaskStatusRequest": {
        "task_id": (1, "string"),
    },
    "GetTaskStatusResponse": {
        "task_id": (1, "string"),
        "status": (2, "string"),
        "result": (3, "map<string,string>"),
        "error": (4, "string"),
    },
    "CreateWorkflowRequest": {
        "id": (1, "string"),
        "name": (2, "string"),
        "description": (3, "string"),
        "spec": (4, "bytes"),
    },
    "CreateWorkflowResponse": {
        "success": (1, "bool"),
        "workflow_id": (2, "string"),
        "error": (3, "string"),
    },
    "StartWorkflowRunRequest": {
        "workflow_id": (1, "string"),
        "idempotency_key": (2, "string"),
        "input": (3, "map<string,string>"),
    },
    "StartWorkflowRunResponse": {
        "success": (1, "bool"),
        "run_id": (2, "string"),
        "error": (3, "string"),
    },
    "StreamWorkflowStatusRequest": {
        "run_id": (1, "string"),
    },
    "WorkflowStatusUpdate": {
        "run_id": (1, "string"),
        "status": (2, "string"),
        "current_step": (3, "string"),
        "steps_completed": (4, "int32"),
        "total_steps": (5, "int32"),
        "output": (6, "map<string,string>"),
        "error": (7, "string"),
    },
    "GetMetricsRequest": {
        "metric_names": (1, "repeated string"),
    },
    "MetricsResponse": {
        "metrics": (1, "map<string,double>"),
        "timestamp": (2, "int64"),
    },
    "StreamEventsRequest": {
        "event_types": (1, "repeated string"),
        "since_timestamp": (2, "int64"),
    },
    "SystemEvent": {
        "event_type": (1, "string"),
        "resource_id": (2, "string"),
        "data": (3, "map<string,string>"),
        "timestamp": (4, "int64"),
    },
    "HealthRequest": {},
    "HealthResponse": {
        "healthy": (1, "bool"),
        "version": (2, "string"),
        "services": (3, "map<string,string>"),
    },
}

ORCHESTRATOR_METHODS: Methods = {
    "SubmitTask": ("SubmitTaskRequest", "SubmitTaskResponse", False),
    "StreamTaskResults": ("StreamTaskResultsRequest", "TaskResult", True),
    "GetTaskStatus": ("GetTaskStatusRequest", "GetTaskStatusResponse", False),
    "CreateWorkflow": ("CreateWorkflowRequest", "CreateWorkflowResponse", False),
    "StartWorkflowRun": ("StartWorkflowRunRequest", "StartWorkflowRunResponse", False),
    "StreamWorkflowStatus": ("StreamWorkflowStatusRequest", "WorkflowStatusUpdate", True),
    "GetMetrics": ("GetMetricsRequest", "MetricsResponse", False),
    "StreamEvents": ("StreamEventsRequest", "SystemEvent", True),
    "Health": ("HealthRequest", "HealthResponse", False),
}

# (generated messages module, generated services module, package, service, messages, methods)
WIRE_API = [
    pytest.param(
        env_manager_pb2,
        env_manager_pb2_grpc,
        "env_manager.v1",
        "EnvManagerService",
        ENV_MANAGER_MESSAGES,
        ENV_MANAGER_METHODS,
        id="env_manager",
    ),
    pytest.param(
        orchestrator_pb2,
        orchestrator_pb2_grpc,
        "orchestrator.v1",
        "OrchestratorService",
        ORCHESTRATOR_MESSAGES,
        ORCHESTRATOR_METHODS,
        id="orchestrator",
    ),
]

SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def _type_name(descriptor: Descriptor, package: str) -> str:
    prefix = package + "."
    full = descriptor.full_name
    return full[len(prefix) :] if full.startswith(prefix) else full


def describe(field: FieldDescriptor, package: str) -> str:
    """A field's type in the wire API's notation."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key = describe(message.fields_by_name["key"], package)
        value = describe(message.fields_by_name["value"], package)
        return f"map<{key},{value}>"
    if message is not None:
        base = _type_name(message, package)
    elif field.enum_type is not None:
        base = field.enum_type.full_name.removeprefix(package + ".")
    else:
        base = SCALARS.get(field.type, f"type#{field.type}")
    return f"repeated {base}" if field.is_repeated else base


def _generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix != ".pyc"
    }


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "wire"
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"gen_proto.py failed:\n{result.stdout}{result.stderr}"

    fresh = _generated_files(out)
    committed = _generated_files(WIRE_DIR)
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    differ = sorted(
        name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
    )
    assert not (missing or extra or differ), (
        f"{STALE} (missing: {missing}, extra: {extra}, differ: {differ})"
    )


@pytest.mark.parametrize(("pb2", "pb2_grpc", "package", "service", "messages", "methods"), WIRE_API)
def test_descriptors_match_wire_api(
    pb2: ModuleType,
    pb2_grpc: ModuleType,
    package: str,
    service: str,
    messages: dict[str, Fields],
    methods: Methods,
) -> None:
    file: FileDescriptor = pb2.DESCRIPTOR
    assert file.package == package

    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    assert proto.syntax == "proto3", f"{file.name}: syntax must stay proto3"

    problems: list[str] = []
    for message_name, fields in messages.items():
        message = file.message_types_by_name.get(message_name)
        if message is None:
            problems.append(f"message {package}.{message_name} is missing")
            continue
        for field_name, (number, type_) in fields.items():
            field = message.fields_by_name.get(field_name)
            if field is None:
                problems.append(f"{message_name}.{field_name} is missing")
                continue
            actual = (field.number, describe(field, package))
            if actual != (number, type_):
                problems.append(
                    f"{message_name}.{field_name}: expected {number} {type_}, "
                    f"got {actual[0]} {actual[1]}"
                )

    service_descriptor = file.services_by_name.get(service)
    if service_descriptor is None:
        problems.append(f"service {package}.{service} is missing")
    else:
        assert service_descriptor.full_name == f"{package}.{service}"
        for method_name, (request, response, server_streaming) in methods.items():
            method = service_descriptor.methods_by_name.get(method_name)
            if method is None:
                problems.append(f"rpc {service}.{method_name} is missing")
                continue
            actual_method = (
                _type_name(method.input_type, package),
                _type_name(method.output_type, package),
                method.server_streaming,
                method.client_streaming,
            )
            if actual_method != (request, response, server_streaming, False):
                problems.append(
                    f"rpc {service}.{method_name}: expected "
                    f"{(request, response, server_streaming, False)} "
                    f"(input, output, server_streaming, client_streaming), got {actual_method}"
                )
        # The generated service module must be importable inside the package and expose the API.
        for attribute in (
            f"{service}Stub",
            f"{service}Servicer",
            f"add_{service}Servicer_to_server",
        ):
            assert hasattr(pb2_grpc, attribute), f"{pb2_grpc.__name__} lacks {attribute}"

    assert not problems, "proto/ no longer matches WIRE-API.md:\n" + "\n".join(problems)


def test_class_field_round_trips() -> None:
    """`class` is a Python keyword: the field keeps its name; callers use ** and getattr/setattr.

    mypy-protobuf leaves `class` out of the typed __init__ and attributes, so typed code passes it
    through a dict[str, Any] (or sets it with setattr) and reads it with getattr.
    """
    kwargs: dict[str, Any] = {"class": "gpu"}
    request = orchestrator_pb2.SubmitTaskRequest(id="t1", payload={"k": '"v"'}, **kwargs)
    decoded = orchestrator_pb2.SubmitTaskRequest.FromString(request.SerializeToString())
    assert getattr(decoded, "class") == "gpu"
    assert decoded.id == "t1"
    assert dict(decoded.payload) == {"k": '"v"'}
    setattr(decoded, "class", "cpu_short")
    assert getattr(decoded, "class") == "cpu_short"
