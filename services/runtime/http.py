"""The daemon's HTTP side: Prometheus `/metrics`, JSON `/health`, plus routes a daemon adds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .values import HostPort

HealthReport = Callable[[], Awaitable[dict[str, Any]]]


class HttpEndpoint:
    def __init__(
        self,
        address: HostPort,
        registry: CollectorRegistry,
        health_report: HealthReport,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self._address = address
        self._registry = registry
        self._health_report = health_report
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.add_routes(routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._started = time.monotonic()

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._address.host, self._address.port,
                           reuse_port=False)
        await site.start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, _request: web.Request) -> web.Response:
        report = await self._health_report()
        report["uptime_seconds"] = round(time.monotonic() - self._started, 3)
        return web.json_response(report, status=200 if report.get("healthy") else 503)
