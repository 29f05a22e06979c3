"""Domain errors, free of gRPC; the runtime maps them to status codes (services/runtime/status.py).

Raise the class that says what went wrong; the message is shown to the caller as is, so it names
the field or the thing at fault.
"""

from __future__ import annotations

#: The longest message a DomainError carries: what a caller sent is echoed in messages, and an
#: unbounded echo would overflow the gRPC status metadata (about 8 KB) into INTERNAL.
MAX_MESSAGE_CHARS = 1024
#: How much of one caller value `shown` echoes.
SHOWN_CHARS = 200


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    suffix = f"...(+{len(text) - limit} chars)"
    return text[:max(0, limit - len(suffix))] + suffix


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """The repr of a caller's value for an error message, at most `limit` characters."""
    return shorten(repr(value), limit)


class DomainError(Exception):
    """Base of every error a caller should see with a precise status. The message is capped at
    MAX_MESSAGE_CHARS, so no message echoes unbounded input."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (shorten(args[0], MAX_MESSAGE_CHARS),)
        super().__init__(*args)


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
