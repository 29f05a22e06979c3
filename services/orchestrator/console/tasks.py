"""Tasks: the filtered, paged list and a task's page, with Cancel and Resubmit.

GET  /console/tasks                   ?status=&class=&id=PREFIX&from=&to=&page=TOKEN&size=N
GET  /console/tasks/{id}              payload, attempts and executions, timings, result, events
POST /console/tasks/{id}/cancel       (CSRF) cancel, then back to the task's page
POST /console/tasks/{id}/resubmit     (CSRF) the same request under a new id, then its page

`from` and `to` are unix seconds or ISO 8601 (UTC when no offset is given). Filtering and paging
are the domain's ListTasks (Orchestrator.list_tasks), server-side.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from agent_infra.runtime.errors import DomainError, InvalidArgument
from agent_infra.runtime.parsing import parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from ..domain import STATUSES
from ..model import Event, Task, TaskRequest
from . import queries
from .shell import PREFIX, Console

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Result keys shown in their own panels, not in the table of the others.
SHOWN_APART = frozenset({"stdout", "stderr", "stdout_tail", "stderr_tail", "runner_output",
                         "outputs_summary", "stdout_truncated", "stderr_truncated",
                         "stdout_bytes", "stderr_bytes"})


def routes(console: Console) -> list[web.RouteDef]:
    async def task_list(request: web.Request) -> web.StreamResponse:
        domain = console.domain()
        query = request.query
        filters = {key: query.get(key, "").strip() for key in ("status", "class", "id", "from",
                                                               "to")}
        error = ""
        tasks: list[Task] = []
        next_token = ""
        try:
            size = parse_int(query.get("size", "") or PAGE_SIZE, "size", 1, MAX_PAGE_SIZE)
            page = await domain.list_tasks(
                statuses=[filters["status"]] if filters["status"] else [],
                task_class=filters["class"], id_prefix=filters["id"],
                submitted_after=_time(filters["from"], "from"),
                submitted_before=_time(filters["to"], "to"),
                page_size=size, page_token=query.get("page", ""))
            tasks, next_token = page.tasks, page.next_page_token
        except ValueError as exc:
            error = str(exc)
        except DomainError as exc:
            error = str(exc)
        kept = {k: v for k, v in filters.items() if v}
        return console.render(
            request, "tasks.html", section="tasks", title="Tasks", status=400 if error else 200,
            tasks=tasks, filters=filters, error=error, statuses=STATUSES,
            classes=sorted(domain.settings.classes),
            next_url=f"{PREFIX}/tasks?{urlencode({**kept, 'page': next_token})}"
            if next_token else "",
            first_url=f"{PREFIX}/tasks?{urlencode(kept)}" if query.get("page") else "",
            now=time.time())

    async def task_page(request: web.Request) -> web.StreamResponse:
        domain = console.domain()
        task_id = request.match_info["id"]
        try:
            task = await domain.scheduler.get(task_id)
        except DomainError as exc:
            return console.render(request, "message.html", section="tasks", title="Task",
                                  status=http_status(exc), message=str(exc))
        stored, events = await domain.store.read(lambda conn: (
            _stored_payload(conn, task_id), queries.task_events(conn, task_id)))
        return console.render(
            request, "task.html", section="tasks", title=f"Task {task_id}", task=task,
            payload=_pretty_map(stored), result=_result_view(task.result),
            events=events, attempts=_attempts(events),
            endpoints=[e.address for e in domain.settings.env_managers],
            sent_to=_sent_to(domain.executor, task),
            max_attempts=task.max_attempts or getattr(
                domain.settings.classes.get(task.task_class), "max_attempts", "?"),
            flash=request.query.get("done", ""))

    async def cancel(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        try:
            task = await console.domain().scheduler.cancel(task_id)
        except DomainError as exc:
            return _refused(request, exc)
        done = "cancelled" if task.status.value == "cancelled" else f"already {task.status.value}"
        return _back(request, f"{PREFIX}/tasks/{task_id}?{urlencode({'done': done})}")

    async def resubmit(request: web.Request) -> web.StreamResponse:
        domain = console.domain()
        task_id = request.match_info["id"]
        try:
            task = await domain.scheduler.get(task_id)
            payload = await domain.store.read(lambda conn: _stored_payload(conn, task_id))
            new_id = f"{task_id[:100]}.re-{secrets.token_hex(4)}"
            fresh, _ = await domain.scheduler.submit(TaskRequest(
                id=new_id, task_class=task.task_class, payload=payload,
                priority=task.priority, workflow_id=task.workflow_id,
                timeout_seconds=task.timeout_seconds, max_attempts=task.max_attempts))
        except DomainError as exc:
            return _refused(request, exc)
        return _back(request, f"{PREFIX}/tasks/{fresh.id}?"
                              f"{urlencode({'done': f'resubmitted from {task_id}'})}")

    return [
        web.get(PREFIX + "/tasks", console.page(task_list)),
        web.get(PREFIX + "/tasks/{id}", console.page(task_page)),
        web.post(PREFIX + "/tasks/{id}/cancel", console.action(cancel)),
        web.post(PREFIX + "/tasks/{id}/resubmit", console.action(resubmit)),
    ]


def _sent_to(executor: object, task: Task) -> list[str]:
    """Where the running execution was sent (env-manager endpoints), when the executor says."""
    where = getattr(executor, "endpoints", None)
    if where is None or task.status.terminal:
        return []
    return [str(address) for address in where(task.execution_id, task.task_class)]


def _attempts(events: list[Event]) -> list[dict[str, Any]]:
    """One row per dispatch (task_started), with how it ended: retried (and why), or the
    task's final state."""
    rows: list[dict[str, Any]] = []
    for event in events:
        if event.event_type == "task_started":
            rows.append({"attempt": event.data.get("attempt", ""), "started": event.timestamp,
                         "ended": 0.0, "outcome": "running", "error": ""})
        elif rows and event.event_type == "task_retrying":
            rows[-1].update(ended=event.timestamp, outcome="retried",
                            error=event.data.get("error", ""))
        elif rows and event.event_type in ("task_completed", "task_failed", "task_cancelled"):
            rows[-1].update(ended=event.timestamp, outcome=event.event_type[5:],
                            error=event.data.get("error", ""))
    return rows


def _back(request: web.Request, location: str) -> web.StreamResponse:
    """A form goes back to a page (303); a script (JSON) gets where to go."""
    if request.content_type == "application/json":
        return web.json_response({"success": True, "location": location})
    raise web.HTTPSeeOther(location)


def _refused(request: web.Request, exc: DomainError) -> web.Response:
    return web.json_response({"success": False, "error": str(exc)}, status=http_status(exc))


def _time(text: str, name: str) -> float:
    """Unix seconds from unix seconds or ISO 8601 (UTC unless an offset says); 0 when empty."""
    if not text:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidArgument(f"{name} must be unix seconds >= 0, got {text[:40]!r}")
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be unix seconds or ISO 8601 "
                              f"(2026-01-31T12:00), got {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return max(moment.timestamp(), 0.0)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgument(f"{name}: {text[:40]!r} is out of range") from None


def _stored_payload(conn: Any, task_id: str) -> dict[str, str]:
    row = conn.execute("SELECT payload FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return dict(json.loads(row[0])) if row else {}


def _pretty(value: str) -> tuple[str, bool]:
    """(text, is_json): a JSON object or array value indented, anything else as it is."""
    text = value.strip()
    if text[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
        except ValueError:
            pass
    return value, False


def _pretty_map(values: dict[str, str]) -> list[tuple[str, str, bool]]:
    return [(key, *_pretty(value)) for key, value in sorted(values.items())]


def _result_view(result: dict[str, str]) -> dict[str, Any]:
    streams = []
    for name in ("stdout", "stderr"):
        text = result.get(name, result.get(f"{name}_tail", ""))
        streams.append({
            "name": name, "text": text,
            "truncated": result.get(f"{name}_truncated") == "true",
            "bytes": result.get(f"{name}_bytes", ""), "shown": len(text.encode())})
    structured = [(key, _pretty(result[key])[0]) for key in ("runner_output", "outputs_summary")
                  if result.get(key)]
    others = [(key, value) for key, value in sorted(result.items()) if key not in SHOWN_APART]
    return {"streams": streams, "structured": structured, "others": others}
