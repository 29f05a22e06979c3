"""The descriptors reflection serves: original file names, json_name on every field, and the
`grpc.reflection.v1` file derived from v1alpha."""

from __future__ import annotations

import pytest
from agent_infra.runtime import reflection
from agent_infra.wire import env_manager_pb2, orchestrator_pb2
from google.protobuf import descriptor_pb2


def test_generated_modules_keep_the_original_file_names() -> None:
    # The module names stay flat (env_manager_pb2) while the descriptor's name is the original's.
    assert env_manager_pb2.DESCRIPTOR.name == "env_manager.v1.proto"
    assert orchestrator_pb2.DESCRIPTOR.name == "orchestrator.v1.proto"
    assert orchestrator_pb2.SubmitTaskRequest.__module__.endswith("orchestrator_pb2")


@pytest.mark.parametrize(("name", "expected"), [
    ("task_id", "taskId"), ("id", "id"), ("class", "class"),
    ("network_rx_bytes", "networkRxBytes"), ("gpu_memory_gb", "gpuMemoryGb"),
    ("a__b", "aB"), ("trailing_", "trailing"), ("x_1", "x1"),
])
def test_json_name_follows_protoc(name: str, expected: str) -> None:
    assert reflection.json_name(name) == expected


def test_pool_serves_json_names_and_both_reflection_versions() -> None:
    pool = reflection.reflection_pool(
        ["orchestrator.v1.OrchestratorService", "env_manager.v1.EnvManagerService"])
    proto = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName("orchestrator.v1.proto").CopyToProto(proto)
    request = next(m for m in proto.message_type if m.name == "SubmitTaskRequest")
    assert {f.name: f.json_name for f in request.field}["workflow_id"] == "workflowId"
    entry = next(m for m in request.nested_type if m.name == "PayloadEntry")
    assert [f.json_name for f in entry.field] == ["key", "value"]
    v1 = pool.FindServiceByName(reflection.V1_SERVICE)
    alpha = pool.FindServiceByName(reflection.V1ALPHA_SERVICE)
    assert v1.file.name == reflection.V1_FILE
    assert [m.name for m in v1.methods] == [m.name for m in alpha.methods]
    assert v1.methods[0].input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
