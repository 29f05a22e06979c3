"""Domain errors, free of gRPC; the runtime maps them to status codes (services/runtime/status.py).

Raise the class that says what went wrong; the message is shown to the caller as is, so it names
the field or the thing at fault.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a caller should see with a precise status."""


class InvalidArgument(DomainError):
    """The request itself is malformed or names unknown values."""


class NotFound(DomainError):
    """An id or name the request refers to does not exist."""


class AlreadyExists(DomainError):
    """A create that is not idempotent met an existing, different thing."""


class FailedPrecondition(DomainError):
    """The system is not in a state where the request can run."""


class ResourceExhausted(DomainError):
    """A queue, quota or size limit is full."""


class Unavailable(DomainError):
    """A dependency (Docker, env-manager, the store) cannot be reached right now."""


class DeadlineExceeded(DomainError):
    """The operation ran out of its time budget."""
