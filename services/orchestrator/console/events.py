"""Events: a live tail with type filters and replay from a chosen time.

GET /console/events   ?types=a,b&since=UNIX_SECONDS: the page; its script reads
                      /console/stream with the same query (the StreamEvents sequence numbers).
"""

from __future__ import annotations

from aiohttp import web

from ..events import EVENT_TYPES
from .shell import PREFIX, Console


def routes(console: Console) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.StreamResponse:
        chosen = [t for t in request.query.get("types", "").split(",") if t in EVENT_TYPES]
        return console.render(request, "events.html", section="events", title="Events",
                              event_types=EVENT_TYPES, chosen=chosen,
                              since=request.query.get("since", ""))

    return [web.get(PREFIX + "/events", console.page(page))]
