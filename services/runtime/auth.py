"""Bearer-token authentication for every RPC, checked before the handler runs."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Iterable
from typing import Any

import grpc

from .rpc import Invoke, RpcInfo

HEALTH_SERVICE = "grpc.health.v1.Health"


class TokenAuth:
    """Requires `authorization: Bearer <token>` when a token is configured.

    The token and the open services can be replaced at run time (SIGHUP reload).
    """

    def __init__(self, token: str | None, open_services: Iterable[str] = ()) -> None:
        self.update(token, open_services)

    def update(self, token: str | None, open_services: Iterable[str]) -> None:
        self._token = token.encode() if token else None
        self._open = frozenset(open_services)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `authorization` header value (HTTP or gRPC) carries the right token."""
        if self._token is None:
            return True
        presented = _bearer([("authorization", authorization)] if authorization else [])
        return presented is not None and hmac.compare_digest(presented, self._token)

    def __call__(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
    ) -> Awaitable[Any]:
        # Not a coroutine itself: it hands back the call (or the abort) for the layer above to
        # await, which spares every RPC one coroutine layer.
        if self._token is not None and info.service not in self._open:
            presented = _bearer(context.invocation_metadata() or ())
            if presented is None or not hmac.compare_digest(presented, self._token):
                return context.abort(  # type: ignore[no-any-return]
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
                )
        return invoke()


def _bearer(metadata: Iterable[Any]) -> bytes | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" else None
    return None
