"""One exception hierarchy for every client call.

Every error a client raises is an `InfraError`. The subclass says what went wrong (one per gRPC
status a caller can act on); `details` is the server's own message, unchanged, so it still names
the field or id at fault. Catch `InfraError` for "anything from the infrastructure", or a subclass
for one case::

    try:
        await env.restart_service("cache")
    except NotFound as exc:
        print(exc.details)          # "unknown service 'cache'"
    except InfraUnavailable:
        ...                         # env-manager down or unreachable
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InfraError",
    "InfraUnavailable",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unimplemented",
    "error_from_rpc",
]


class InfraError(Exception):
    """An RPC to an agent-infra daemon failed.

    Attributes:
        code: the gRPC status code name, e.g. ``"NOT_FOUND"``.
        details: the server's message (or the client's, for errors raised before any RPC).
        address: the address that was dialled, e.g. ``"127.0.0.1:50100"``.
        method: the full RPC name (``"/env_manager.v1.EnvManagerService/StreamLogs"``), when
            the error came from one call.
    """

    #: The status this class stands for; the base class is used for codes without a subclass.
    default_code = "UNKNOWN"

    def __init__(self, details: str, *, address: str, code: str | None = None,
                 method: str | None = None) -> None:
        self.code = code or self.default_code
        self.details = details
        self.address = address
        self.method = method
        where = f"{address}{method}" if method else address
        super().__init__(f"{details} ({self.code} from {where})")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default pickling (multiprocessing, logging).
        return (_rebuild, (type(self), self.details, self.address, self.code, self.method))


def _rebuild(cls: type[InfraError], details: str, address: str, code: str,
             method: str | None) -> InfraError:
    return cls(details, address=address, code=code, method=method)


class InvalidArgument(InfraError):
    """The request was malformed or named an unknown value (INVALID_ARGUMENT)."""

    default_code = "INVALID_ARGUMENT"


class NotFound(InfraError):
    """An id or name in the request does not exist (NOT_FOUND)."""

    default_code = "NOT_FOUND"


class AlreadyExists(InfraError):
    """A create met an existing, different thing (ALREADY_EXISTS)."""

    default_code = "ALREADY_EXISTS"


class FailedPrecondition(InfraError):
    """The system is not in a state where the request can run (FAILED_PRECONDITION)."""

    default_code = "FAILED_PRECONDITION"


class ResourceExhausted(InfraError):
    """A queue, quota or size limit is full, or a message was too large (RESOURCE_EXHAUSTED)."""

    default_code = "RESOURCE_EXHAUSTED"


class PermissionDenied(InfraError):
    """The caller is known but not allowed to do this (PERMISSION_DENIED)."""

    default_code = "PERMISSION_DENIED"


class Unauthenticated(InfraError):
    """The bearer token was missing or wrong (UNAUTHENTICATED)."""

    default_code = "UNAUTHENTICATED"


class DeadlineExceeded(InfraError):
    """The call did not finish within its deadline (DEADLINE_EXCEEDED)."""

    default_code = "DEADLINE_EXCEEDED"


class Cancelled(InfraError):
    """The call was cancelled, usually by the server shutting down (CANCELLED)."""

    default_code = "CANCELLED"


class Unimplemented(InfraError):
    """The server does not know this RPC: an older or different daemon (UNIMPLEMENTED)."""

    default_code = "UNIMPLEMENTED"


class Internal(InfraError):
    """The server failed on its own, not because of the request (INTERNAL, DATA_LOSS)."""

    default_code = "INTERNAL"


class InfraUnavailable(InfraError):
    """The daemon, or something it depends on, cannot be reached (UNAVAILABLE).

    Also raised when no connection could be made within the connect timeout; `address` names
    where the client tried.
    """

    default_code = "UNAVAILABLE"


_BY_CODE: dict[str, type[InfraError]] = {
    cls.default_code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted,
                PermissionDenied, Unauthenticated, DeadlineExceeded, Cancelled, Unimplemented,
                Internal, InfraUnavailable)
}
# Same meaning for a caller as INTERNAL: nothing in the request to fix.
_BY_CODE["DATA_LOSS"] = Internal


def error_from_rpc(error: Any, address: str, method: str | None = None) -> InfraError:
    """The `InfraError` subclass for a failed call (a ``grpc.aio.AioRpcError``).

    Codes without a subclass of their own (UNKNOWN, ABORTED, OUT_OF_RANGE) give `InfraError`
    itself, still carrying the code name.
    """
    status = error.code()
    code = status.name if isinstance(status, grpc.StatusCode) else str(status)
    details = error.details() or code.replace("_", " ").lower()
    cls = _BY_CODE.get(code, InfraError)
    return cls(details, address=address, code=code, method=method)
