"""The wire side of domain errors: each becomes its gRPC status (or HTTP status), with its message
as details."""

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

# The one table of what each domain error is on the wire: its gRPC status code, and the HTTP
# status a daemon's HTTP routes answer with.
STATUSES: dict[type[DomainError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, 409),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 412),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
}
# A DomainError of no class above (a bug): INTERNAL, 500.
_UNMAPPED = (grpc.StatusCode.INTERNAL, 500)


def _statuses(error: DomainError) -> tuple[grpc.StatusCode, int]:
    for cls in type(error).__mro__:
        found = STATUSES.get(cls)
        if found is not None:
            return found
    return _UNMAPPED


_BY_CODE: dict[str, type[DomainError]] = {code.name: cls for cls, (code, _) in STATUSES.items()}


def error_for_status(code_name: str) -> type[DomainError] | None:
    """The domain error a peer's gRPC status (by name, e.g. "NOT_FOUND") stands for: the table
    read backwards; None for a status no domain error has (UNAUTHENTICATED, INTERNAL...)."""
    return _BY_CODE.get(code_name)


def grpc_status(error: DomainError) -> grpc.StatusCode:
    return _statuses(error)[0]


def http_status(error: DomainError) -> int:
    return _statuses(error)[1]


async def map_domain_errors(
    info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
) -> Any:
    """Middleware: a DomainError escaping a servicer ends the RPC with its status."""
    try:
        return await invoke()
    except DomainError as error:
        await context.abort(grpc_status(error), str(error))
