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

    The token, the open services and what HTTP leaves open (`metrics_open`, `health_open`) can
    be replaced at run time (SIGHUP reload).
    """

    def __init__(self, token: str | None, open_services: Iterable[str] = (), *,
                 metrics_open: bool = False, health_open: bool = True) -> None:
        self.update(token, open_services, metrics_open=metrics_open, health_open=health_open)

    def update(self, token: str | None, open_services: Iterable[str], *,
               metrics_open: bool = False, health_open: bool = True) -> None:
        if token is not None and not token.strip():
            # Settings refuse a blank token; this guards any other caller: never "auth off".
            raise ValueError("a blank token would turn authentication off")
        self._token = token.encode() if token is not None else None
        self._open = frozenset(open_services)
        self.metrics_open = metrics_open
        self.health_open = health_open

    @property
    def enabled(self) -> bool:
        return self._token is not None

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
