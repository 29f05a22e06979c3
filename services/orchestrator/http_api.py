"""The orchestrator's HTTP routes beside /metrics and /health, as the original's clients use them.

GET /queue/status   pending, running, completed, failed and cancelled per class, and totals
POST /queue/submit  JSON {"id", "class", "payload", "priority"?, "workflow_id"?}: the same
                    validation, storage and auth as SubmitTask
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from agent_infra.runtime.errors import MAX_MESSAGE_CHARS, DomainError, InvalidArgument, shorten
from agent_infra.runtime.parsing import INT32, load_json, parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from .domain import Orchestrator
from .model import TaskRequest


def queue_routes(domain: Callable[[], Orchestrator],
                 authorize: Callable[[str | None], bool]) -> Sequence[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _error(401, "missing or wrong bearer token")
        return web.json_response(await domain().queue_status())

    async def submit(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _error(401, "missing or wrong bearer token")
        try:
            body = load_json(await request.read(), "body")
        except ValueError as exc:
            return _error(400, shorten(str(exc), MAX_MESSAGE_CHARS))
        try:
            task, created = await domain().scheduler.submit(task_request(body))
        except DomainError as exc:
            return _error(http_status(exc), str(exc))
        return web.json_response({"success": True, "task_id": task.id, "error": "",
                                  "created": created, "status": task.status.value},
                                 status=201 if created else 200)

    return [web.get("/queue/status", status), web.post("/queue/submit", submit)]


def task_request(body: object) -> TaskRequest:
    """A TaskRequest from the original HTTP clients' JSON; errors name the field."""
    if not isinstance(body, dict):
        raise InvalidArgument("body must be a JSON object {\"id\", \"class\", \"payload\"}")
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise InvalidArgument("payload must be a JSON object")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidArgument("priority must be an integer")
    try:
        parse_int(priority, "priority", *INT32)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    for key in ("id", "class", "workflow_id"):
        if not isinstance(body.get(key, ""), str):
            raise InvalidArgument(f"{key} must be a string")
    return TaskRequest(
        id=body.get("id", ""), task_class=body.get("class", ""),
        payload={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in payload.items()},
        priority=priority, workflow_id=body.get("workflow_id", ""),
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status)
