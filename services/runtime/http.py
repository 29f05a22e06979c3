"""The daemon's HTTP side: Prometheus `/metrics`, JSON `/health`, plus routes a daemon adds.

It is held to the same rules as the gRPC port: TLS with the same certificate and key whenever
gRPC has TLS (client certificates required whenever gRPC requires them), the same bearer token
(`/metrics` and the detail of `/health` included, unless `auth.metrics_open` /
`auth.health_open` open them), and bounds against clients that hold connections without
finishing a request (slowloris): a header timeout, an idle timeout, a request timeout and a limit
on open connections.

A request whose body the handler did not read (a 405 from the router, a 401, GET /metrics with
a body) has it drained, up to DRAIN_LIMIT bytes, before the answer goes out, so the connection
stays usable; a longer body gets its answer with `Connection: close` (the client is told not to
reuse the connection, rather than finding it reset). `/health` says `"status": "ok"` while the
daemon serves (the original stack's probes read that), its state name otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import logs
from .auth import TokenAuth
from .settings import ServerSettings, TlsSettings

HealthReport = Callable[[], Awaitable[dict[str, Any]]]

log = logs.get_logger("http")

# The most of an unread request body drained to keep its connection alive (see the docstring).
DRAIN_LIMIT = 4 * 1024 * 1024
#: /health's "status" while the daemon serves (the original's value).
HEALTH_OK = "ok"

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="agent-infra"'}


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The HTTP listener's TLS: the gRPC port's certificate, key and client CA."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Connections:
    """The listener's open connections, oldest first, and its limit."""

    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open: dict[_Connection, None] = {}

    def admit(self, connection: _Connection) -> bool:
        """Whether `connection` may stay. At the limit, the oldest connection waiting for a
        request (idle, or half sent) is closed to make room; when every one is busy with a
        request, the new one is refused."""
        if len(self.open) >= self.limit:
            victim = next((c for c in self.open if not c.busy), None)
            log.warning("http_connection_limit", limit=self.limit,
                        closed="oldest waiting" if victim is not None else "new")
            if victim is None:
                return False
            self.open.pop(victim, None)
            victim.force_close()
        self.open[connection] = None
        return True


class _Connection(RequestHandler):
    """aiohttp's protocol, plus a header timeout and the connection limit.

    The header timer runs from the connection's start, and on a kept-alive connection from the
    first byte of the next request, until the request's handler starts (the request line and
    headers are in). aiohttp's own keep-alive timer is the idle timeout.
    """

    def __init__(self, *args: Any, connections: _Connections, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = connections
        self._header_timer: asyncio.TimerHandle | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._connections.admit(self):
            self.force_close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connections.open.pop(self, None)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.busy and self._header_timer is None and self.transport is not None:
            self._arm_header_timer()

    def request_started(self) -> None:
        self.busy = True
        self._cancel_header_timer()

    def request_finished(self) -> None:
        self.busy = False

    def _arm_header_timer(self) -> None:
        self._header_timer = asyncio.get_running_loop().call_later(
            self._connections.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.busy:
            self.force_close()


class HttpEndpoint:
    def __init__(
        self,
        settings: ServerSettings,
        registry: CollectorRegistry,
        health_report: HealthReport,
        auth: TokenAuth,
        ssl_context: ssl.SSLContext | None = None,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._health_report = health_report
        self._auth = auth
        self._ssl = ssl_context
        self._request_timeout = settings.http_request_timeout
        app = web.Application(middlewares=[self._per_request])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.add_routes(routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._server: asyncio.Server | None = None
        self._connections = _Connections(settings.http_max_connections,
                                         settings.http_header_timeout)
        self._started = time.monotonic()

    async def start(self) -> None:
        await self._runner.setup()
        assert self._runner.server is not None
        loop = asyncio.get_running_loop()
        protocol = functools.partial(
            _Connection, self._runner.server, loop=loop, access_log=None,
            keepalive_timeout=self._settings.http_idle_timeout, connections=self._connections)
        address = self._settings.http_addr
        try:
            self._server = await loop.create_server(
                protocol, address.host, address.port, ssl=self._ssl, backlog=128,
                # A TLS handshake never finished holds a socket too.
                ssl_handshake_timeout=self._settings.http_header_timeout if self._ssl else None,
            )
        except BaseException:
            await self._runner.cleanup()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()

    @web.middleware
    async def _per_request(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        connection = request.protocol if isinstance(request.protocol, _Connection) else None
        if connection is not None:
            connection.request_started()
        try:
            # A handler that outlives this (a body trickled in) ends with 504.
            async with asyncio.timeout(self._request_timeout):
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    # aiohttp's own answers (405 from the router, 404, 413) are raised.
                    if not await _drain(request):
                        exc.force_close()
                    raise
                if not await _drain(request):
                    response.force_close()
                return response
        finally:
            if connection is not None:
                connection.request_finished()

    def _authorized(self, request: web.Request) -> bool:
        return self._auth.allows(request.headers.get("Authorization"))

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._auth.metrics_open and not self._authorized(request):
            return _unauthorized()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        report = await self._health_report()
        status = 200 if report.get("healthy") else 503
        if report.get("healthy"):
            report["status"] = HEALTH_OK
        if not self._authorized(request):
            if not self._auth.health_open:
                return _unauthorized()
            # Probes get the state; the detail (reason, dependencies, version) needs the token.
            return web.json_response({"status": report.get("status")}, status=status)
        report["uptime_seconds"] = round(time.monotonic() - self._started, 3)
        return web.json_response(report, status=status)


async def _drain(request: web.Request) -> bool:
    """Read and drop what is left of the request's body, up to DRAIN_LIMIT bytes; whether it
    is all read (the connection can serve the next request)."""
    if not request.body_exists:
        return True
    content = request.content
    if request.content_length is not None and request.content_length > DRAIN_LIMIT:
        return content.is_eof()
    drained = 0
    while not content.is_eof():
        chunk = await content.readany()
        if not chunk:
            break
        drained += len(chunk)
        if drained > DRAIN_LIMIT:
            return False
    return True


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
        status=401, headers=_UNAUTHORIZED_HEADERS)
