"""Overview: per-class counts, throughput and latency, dependency health, newest failures."""

from __future__ import annotations

from aiohttp import web

from .shell import PREFIX, Console


def routes(console: Console) -> list[web.RouteDef]:
    async def overview(request: web.Request) -> web.StreamResponse:
        return console.render(request, "overview.html", section="overview", title="Overview")

    return [web.get(PREFIX + "/", console.page(overview))]
