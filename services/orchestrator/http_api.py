"""The orchestrator's HTTP routes beside /metrics and /health, as the original's clients use them.

GET  /queue/status            per class and totals (pending, running, completed, failed,
                              cancelled), and the original's pending, done, submitted, processed,
                              completed (compat.queue_summary)
POST /queue/submit            JSON {"id"?, "class"?, "payload"?, "priority"?, "workflow_id"?}: the
                              same validation, storage and auth as SubmitTask; answers ours
                              (success, task_id, error, created, status) and the original's
                              (ok, id; for gpu_slurm slurm_job_id and status "submitted")
GET  /slurm/status/{task_id}  the Slurm job record of a gpu_slurm task (compat.slurm_job)

Bodies are bounded by limits.max_payload_bytes plus BODY_ENVELOPE (413 beyond). Errors are
JSON {"success": false, "ok": false, "error": MESSAGE} with the status of the error table
(status.http_status): 400 naming the field, 404 unknown ids, 409, 412, 429, 401 without the
token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from agent_infra.runtime.errors import MAX_MESSAGE_CHARS, DomainError, InvalidArgument, shorten
from agent_infra.runtime.parsing import INT32, load_json, parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from . import compat
from .domain import Orchestrator
from .executors.slurm.payload import SLURM_CLASS
from .model import TaskRequest

# Room for the JSON around a payload (id, class, quoting) above limits.max_payload_bytes.
BODY_ENVELOPE = 64 * 1024
# How long POST /queue/submit of a gpu_slurm task waits for sbatch's job id before answering
# (slurm_job_id null after that: GET /slurm/status/{id} has it once sbatch answered).
SLURM_JOB_WAIT = 5.0


def queue_routes(domain: Callable[[], Orchestrator],
                 authorize: Callable[[str | None], bool]) -> Sequence[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _unauthorized()
        return web.json_response(await domain().queue_status())

    async def submit(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _unauthorized()
        orchestrator = domain()
        limit = orchestrator.settings.limits.max_payload_bytes + BODY_ENVELOPE
        try:
            raw = await read_bounded(request, limit)
        except BodyTooLarge:
            return _error(413, f"body: over {limit} bytes (limits.max_payload_bytes "
                               f"{orchestrator.settings.limits.max_payload_bytes} for the "
                               "payload)")
        try:
            body = load_json(raw, "body")
        except ValueError as exc:
            return _error(400, shorten(str(exc), MAX_MESSAGE_CHARS))
        try:
            task, created = await orchestrator.scheduler.submit(task_request(body))
        except DomainError as exc:
            return _error(http_status(exc), str(exc))
        answer: dict[str, object] = {
            "success": True, "task_id": task.id, "error": "", "created": created,
            "status": task.status.value, "task_status": task.status.value,
            "ok": True, "id": task.id}
        if task.task_class == SLURM_CLASS:
            try:
                job_id = await compat.slurm_job_id(orchestrator, task.id, SLURM_JOB_WAIT)
            except DomainError:
                job_id = ""  # pruned already: the submit itself stands
            answer.update(slurm_job_id=job_id or None, status="submitted")
        return web.json_response(answer, status=201 if created else 200)

    async def slurm_status(request: web.Request) -> web.Response:
        if not authorize(request.headers.get("Authorization")):
            return _unauthorized()
        try:
            record = await compat.slurm_job(domain(), request.match_info["task_id"])
        except DomainError as exc:
            return _error(http_status(exc), str(exc))
        return web.json_response(record)

    return [web.get("/queue/status", status), web.post("/queue/submit", submit),
            web.get("/slurm/status/{task_id}", slurm_status)]


class BodyTooLarge(Exception):
    pass


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The request's body, refused (BodyTooLarge) as soon as it is known to exceed `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge
    return bytes(data)


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
    return web.json_response({"success": False, "ok": False, "error": message}, status=status)


def _unauthorized() -> web.Response:
    return web.json_response(
        {"success": False, "ok": False, "error": "missing or wrong bearer token"},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="agent-infra"'})
