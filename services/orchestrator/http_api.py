"""The orchestrator's HTTP routes beside /metrics and /health, as the original's clients use them.

GET /queue/status   pending, running, completed, failed and cancelled per class, and totals
POST /queue/submit  JSON {"id", "class", "payload", "priority"?, "workflow_id"?}: the same
                    validation, storage and auth as SubmitTask
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from agent_infra.runtime.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from aiohttp import web

from . import tasks_repo
from .model import TaskRequest
from .scheduler import Scheduler
from .store import Store

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_HTTP_STATUS: dict[type[DomainError], int] = {
    InvalidArgument: 400, NotFound: 404, AlreadyExists: 409, FailedPrecondition: 412,
    ResourceExhausted: 429, Unavailable: 503,
}


def queue_routes(domain: Callable[[], tuple[Store, Scheduler]],
                 authorize: Callable[[str | None], bool]) -> Sequence[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _error(401, "missing or wrong bearer token")
        store, scheduler = domain()
        return web.json_response(await queue_status(store, scheduler))

    async def submit(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _error(401, "missing or wrong bearer token")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"body is not JSON: {exc}")
        try:
            task, created = await domain()[1].submit(task_request(body))
        except DomainError as exc:
            return _error(_status_of(exc), str(exc))
        return web.json_response({"success": True, "task_id": task.id, "error": "",
                                  "created": created, "status": task.status.value},
                                 status=201 if created else 200)

    return [web.get("/queue/status", status), web.post("/queue/submit", submit)]


async def queue_status(store: Store, scheduler: Scheduler) -> dict[str, Any]:
    stored = await store.read(tasks_repo.counts)
    classes: dict[str, dict[str, int]] = {}
    for name, (pending, running) in scheduler.queue_depths().items():
        counts = {s: stored.get((name, s), 0) for s in ("completed", "failed", "cancelled")}
        classes[name] = {"pending": pending, "running": running, **counts}
    totals = {s: sum(c[s] for c in classes.values()) for s in STATUSES}
    return {"classes": classes, "totals": totals}


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
    for key in ("id", "class", "workflow_id"):
        if not isinstance(body.get(key, ""), str):
            raise InvalidArgument(f"{key} must be a string")
    return TaskRequest(
        id=body.get("id", ""), task_class=body.get("class", "") or "cpu_short",
        payload={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in payload.items()},
        priority=priority, workflow_id=body.get("workflow_id", ""),
    )


def _status_of(error: DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]
    return 500


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status)
