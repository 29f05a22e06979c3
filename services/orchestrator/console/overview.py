"""Overview: per-class counts, throughput and latency, dependency health, newest failures.

GET /console/                the page (counts, chart and failures rendered in; health fetched)
GET /console/api/overview    the same figures as JSON, re-read by the page on task events
GET /console/api/health      each dependency's state (store, each env-manager, Slurm)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from . import queries
from .shell import PREFIX, Console

# A dependency that has not answered by then is shown as not answering (the page never waits
# for a down endpoint's connect timeout).
HEALTH_TIMEOUT = 3.0


async def overview_data(console: Console) -> dict[str, Any]:
    domain = console.domain()
    now = time.time()
    status = await domain.queue_status()
    buckets, failures = await domain.store.read(lambda conn: (
        queries.throughput(conn, now), queries.newest_failures(conn)))
    return {"classes": status["classes"], "totals": status["totals"],
            "series": [asdict(bucket) for bucket in buckets], "failures": failures,
            "now": now}


def routes(console: Console) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.StreamResponse:
        data = await overview_data(console)
        return console.render(request, "overview.html", section="overview", title="Overview",
                              data=data)

    async def api_overview(request: web.Request) -> web.StreamResponse:
        return web.json_response(await overview_data(console))

    async def api_health(request: web.Request) -> web.StreamResponse:
        domain = console.domain()
        try:
            states = await asyncio.wait_for(domain.health(), HEALTH_TIMEOUT)
        except TimeoutError:
            states = {"store": "UNKNOWN: no answer within the console's health timeout"}
        return web.json_response({"dependencies": [
            {"name": name, "serving": state == "SERVING", "state": state}
            for name, state in states.items()]})

    return [web.get(PREFIX + "/", console.page(page)),
            web.get(PREFIX + "/api/overview", console.api(api_overview)),
            web.get(PREFIX + "/api/health", console.api(api_health))]
