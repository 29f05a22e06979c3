"""gRPC server reflection for both daemons: `grpc.reflection.v1` and `v1alpha`, with json_name.

Two things differ from grpcio-reflection's stock `enable_server_reflection`:

- **json_name.** protoc's Python generator strips `json_name` from the descriptors it embeds in the
  `_pb2` modules, so a reflection client (grpcurl) that reads the served FileDescriptorProto falls
  back to the proto field name and prints `task_id` where the original (Go) server's descriptors
  made it print `taskId`. We serve descriptors from a private pool whose files are copies of the
  default pool's with `json_name` filled the way protoc computes it (lowerCamelCase: an underscore
  is dropped and the next letter upper-cased). Parsing stays lenient: a proto3 JSON parser accepts
  both `taskId` and `task_id`.
- **`grpc.reflection.v1`.** grpcio-reflection (1.85) only ships `v1alpha`. The v1 protocol is the
  same messages under another package, so the same servicer answers both: the v1 method is a
  generic handler that (de)serializes with the v1alpha message classes (byte-identical on the
  wire), and the pool holds a `grpc/reflection/v1/reflection.proto` built from the v1alpha file so
  that `describe grpc.reflection.v1.ServerReflection` works too.

File names are the descriptors' own: the wire files are `env_manager.v1.proto` and
`orchestrator.v1.proto`, as the original stack named them, so FileByFilename answers those names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection as reflection_v1alpha
from grpc_reflection.v1alpha import reflection_pb2

__all__ = [
    "REFLECTION_SERVICES",
    "V1ALPHA_SERVICE",
    "V1_FILE",
    "V1_SERVICE",
    "enable_reflection",
    "json_name",
    "reflection_pool",
]

V1ALPHA_SERVICE: str = reflection_v1alpha.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
REFLECTION_SERVICES: tuple[str, str] = (V1_SERVICE, V1ALPHA_SERVICE)

_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"


def json_name(field_name: str) -> str:
    """protoc's default JSON name of a field: `task_id` -> `taskId` (same rule as ToJsonName)."""
    out: list[str] = []
    capitalize_next = False
    for char in field_name:
        if char == "_":
            capitalize_next = True
        elif capitalize_next:
            out.append(char.upper())
            capitalize_next = False
        else:
            out.append(char)
    return "".join(out)


def _fill_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in [*message.field, *message.extension]:
        if not field.HasField("json_name"):
            field.json_name = json_name(field.name)
    for nested in message.nested_type:
        _fill_message(nested)


FileProto = descriptor_pb2.FileDescriptorProto


def with_json_names(proto: FileProto) -> FileProto:
    """A copy of `proto` where every field carries its json_name (explicit ones are kept)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    for message in copy.message_type:
        _fill_message(message)
    for extension in copy.extension:
        if not extension.HasField("json_name"):
            extension.json_name = json_name(extension.name)
    return copy


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """`grpc/reflection/v1/reflection.proto`: the v1alpha file under the v1 package and name."""
    v1 = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    v1.name = V1_FILE
    v1.package = _V1_PACKAGE
    prefix_old, prefix_new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."

    def retarget(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            if field.type_name.startswith(prefix_old):
                field.type_name = prefix_new + field.type_name[len(prefix_old):]
        for nested in message.nested_type:
            retarget(nested)

    for message in v1.message_type:
        retarget(message)
    for service in v1.service:
        for method in service.method:
            method.input_type = prefix_new + method.input_type[len(prefix_old):]
            method.output_type = prefix_new + method.output_type[len(prefix_old):]
    v1.options.ClearField("java_package")
    v1.options.ClearField("java_outer_classname")
    v1.options.ClearField("objc_class_prefix")
    v1.options.ClearField("csharp_namespace")
    return v1


def _collect(file: FileDescriptor, seen: dict[str, FileDescriptor]) -> None:
    """`file` and its transitive imports, dependencies first."""
    if file.name in seen:
        return
    for dependency in file.dependencies:
        _collect(dependency, seen)
    seen[file.name] = file


def reflection_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool with the files defining `service_names` (and their imports) plus both reflection
    files, every field with its json_name. Services unknown to the default pool are skipped."""
    default = descriptor_pool.Default()
    files: dict[str, FileDescriptor] = {}
    for name in service_names:
        try:
            _collect(default.FindFileContainingSymbol(name), files)
        except KeyError:
            continue
    _collect(reflection_pb2.DESCRIPTOR, files)
    pool = descriptor_pool.DescriptorPool()
    for file in files.values():
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(with_json_names(proto).SerializeToString())
    pool.AddSerializedFile(with_json_names(_v1_file()).SerializeToString())
    return pool


class _MethodAwarePool:
    """The pool as grpcio-reflection uses it, also finding the file of a method's full name
    (`pkg.Service.Method`, what `grpcurl describe` of a method asks for): protobuf's upb pool
    knows services and messages by name, not methods. Everything else is the pool's own."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve `grpc.reflection.v1` and `v1alpha` on `server` for `service_names` (the reflection
    services themselves are listed too)."""
    names = sorted({*service_names, *REFLECTION_SERVICES})
    servicer = reflection_v1alpha.aio.ReflectionServicer(
        names, pool=_MethodAwarePool(reflection_pool(names)))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in REFLECTION_SERVICES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
