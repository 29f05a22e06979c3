"""The wire side of domain errors: each becomes its gRPC status, with its message as details."""

from __future__ import annotations

from typing import Any

import grpc

from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .rpc import Invoke, RpcInfo

_CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(error: DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def map_domain_errors(
    info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
) -> Any:
    """Middleware: a DomainError escaping a servicer ends the RPC with its status."""
    try:
        return await invoke()
    except DomainError as error:
        await context.abort(grpc_status(error), str(error))
