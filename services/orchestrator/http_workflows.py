"""The original's workflow routes on the orchestrator's HTTP port (ORIGINAL-CONTRACTS.md, 3).

GET  /workflows                   {"items": [summary]}, the latest version of each, newest first
POST /workflows                   body: the workflow (typed graph or steps form); 201 with it as
                                  saved (200 when the latest version already had this spec)
GET  /workflows/{id}              the latest version; 404 when there is none
PUT  /workflows/{id}              replace: a new version (the old ones kept as history),
                                  created_at kept; 404 for an unknown id
GET  /workflows/{id}/history      {"items": [workflow]}, every version, newest first
POST /workflows/{id}/runs         body {"idempotency_key"?, "input"?, "metadata"?}: the run
                                  record; 201 when started, 200 when the key had started it
GET  /workflows/{id}/runs?limit=N {"items": [run record]}, newest first (N 1-1000, default 50)
GET  /workflow-runs/{run_id}      the run record; 404 when missing

The same store, validation and bearer token as the gRPC API; errors are JSON
{"success": false, "error": MESSAGE} with the domain error's HTTP status (400 naming the field,
404, 409...), 401 without the token, 405 for a method a path does not have, 413 for a body over
`limits.max_payload_bytes`.

Saved workflows carry `revision` (our version number, 1, 2, ...) beside the composer's own
`version` text, kept as sent. `created_at` is when the first version was saved, `updated_at`
when this one was (RFC 3339, UTC).

The run record is the original's: statuses map one to one, ours -> the original's:
run pending/running/completed/failed -> pending/running/succeeded/failed (a run is never
cancelled: there is no run cancel); step pending/running/completed/failed/skipped ->
pending/running/succeeded/failed/skipped. `input` is as it was sent (over gRPC, the string map);
each step's `result` is its task's result map, or for a reward, deployment or custom node its
config; `attempts` is its task's attempts (1 for a node that runs no task, once done).
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agent_infra.runtime.errors import MAX_MESSAGE_CHARS, DomainError, InvalidArgument, shorten
from agent_infra.runtime.parsing import load_json, parse_int
from agent_infra.runtime.status import http_status
from aiohttp import web

from .domain import Orchestrator
from .workflows import templating
from .workflows.logic import RunStatus, StepStatus
from .workflows.records import Run, Workflow

RUN_STATUS = {RunStatus.PENDING: "pending", RunStatus.RUNNING: "running",
              RunStatus.COMPLETED: "succeeded", RunStatus.FAILED: "failed"}
STEP_STATUS = {StepStatus.PENDING: "pending", StepStatus.RUNNING: "running",
               StepStatus.COMPLETED: "succeeded", StepStatus.FAILED: "failed",
               StepStatus.SKIPPED: "skipped"}
DEFAULT_RUNS = 50
MAX_RUNS = 1000
RUN_KEYS = frozenset({"idempotency_key", "input", "metadata"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def workflow_routes(domain: Callable[[], Orchestrator],
                    authorize: Callable[[str | None], bool]) -> Sequence[web.RouteDef]:
    def guarded(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            if not authorize(request.headers.get("Authorization")):
                return _error(401, "missing or wrong bearer token: send 'Authorization: "
                                   "Bearer <token>'",
                              {"WWW-Authenticate": 'Bearer realm="agent-infra"'})
            try:
                return await handler(request)
            except _TooLarge as exc:
                return _error(413, str(exc))
            except DomainError as exc:
                return _error(http_status(exc), shorten(str(exc), MAX_MESSAGE_CHARS))
        return serve

    async def body(request: web.Request) -> Any:
        limit = domain().settings.limits.max_payload_bytes
        data = await _read_bounded(request, limit)
        if data is None:
            raise _TooLarge(limit)
        try:
            return load_json(data, "body")
        except ValueError as exc:
            raise InvalidArgument(shorten(str(exc), MAX_MESSAGE_CHARS)) from None

    async def list_workflows(request: web.Request) -> web.Response:
        workflows = await domain().workflows.list()
        created = await domain().workflows.created_times([w.id for w in workflows])
        items = [workflow_summary(w, created.get(w.id, w.created_at)) for w in workflows]
        items.sort(key=lambda item: (item["updated_at"], item["id"]), reverse=True)
        return web.json_response({"items": items})

    async def save(request: web.Request, workflow_id: str) -> web.Response:
        document = await body(request)
        if not isinstance(document, dict):
            raise InvalidArgument("body must be a JSON object: the workflow")
        engine = domain().workflows
        text = templating.encode_json(document)
        saved_id, _, created = await engine.create(workflow_id, "", "", text,
                                                   must_exist=bool(workflow_id))
        return web.json_response(await _workflow(domain(), saved_id),
                                 status=201 if created and not workflow_id else 200)

    async def create(request: web.Request) -> web.Response:
        return await save(request, "")

    async def replace(request: web.Request) -> web.Response:
        return await save(request, request.match_info["id"])

    async def get(request: web.Request) -> web.Response:
        return web.json_response(await _workflow(domain(), request.match_info["id"]))

    async def history(request: web.Request) -> web.Response:
        versions = await domain().workflows.history(request.match_info["id"])
        first = min(w.created_at for w in versions)
        return web.json_response({"items": [workflow_json(w, first) for w in versions]})

    async def start_run(request: web.Request) -> web.Response:
        workflow_id = request.match_info["id"]
        document = await body(request)
        if document is None:
            document = {}
        key, flat, original, metadata = run_request(document)
        run, created = await domain().workflows.start_run(
            workflow_id, key, flat, original_input=original, metadata=metadata)
        # The run as it is now (its first steps may have started).
        run = await domain().workflows.get_run(run.run_id)
        return web.json_response(await _run(domain(), run), status=201 if created else 200)

    async def list_runs(request: web.Request) -> web.Response:
        text = request.query.get("limit", "")
        try:
            limit = parse_int(text, "limit", 1, MAX_RUNS) if text else DEFAULT_RUNS
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        runs = await domain().workflows.runs(request.match_info["id"], limit)
        return web.json_response({"items": [await _run(domain(), run) for run in runs]})

    async def get_run(request: web.Request) -> web.Response:
        run = await domain().workflows.get_run(request.match_info["run_id"])
        return web.json_response(await _run(domain(), run))

    def not_allowed(allowed: list[str]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(request: web.Request) -> web.Response:
            return _error(405, f"method {request.method} is not allowed here; use "
                               f"{', '.join(allowed)}", {"Allow": ", ".join(allowed)})
        return answer

    routes = [
        ("/workflows", {"GET": list_workflows, "POST": create}),
        ("/workflows/{id}", {"GET": get, "PUT": replace}),
        ("/workflows/{id}/history", {"GET": history}),
        ("/workflows/{id}/runs", {"GET": list_runs, "POST": start_run}),
        ("/workflow-runs/{run_id}", {"GET": get_run}),
    ]
    defs: list[web.RouteDef] = []
    for path, methods in routes:
        for method, handler in methods.items():
            # web.get also answers HEAD; the others take only their method.
            defs.append(web.route(method, path, guarded(handler)))
        # Any other method: 405 (after the token check), as JSON like every other error.
        defs.append(web.route("*", path, guarded(not_allowed(sorted(methods)))))
    return defs


def run_request(document: Any) -> tuple[str, dict[str, str], Any, dict[str, Any]]:
    """A start-run body {"idempotency_key"?, "input"?, "metadata"?} as start_run takes it:
    (key, input as a string map, the input as sent when it was not one, metadata)."""
    if not isinstance(document, dict):
        raise InvalidArgument("body must be a JSON object {\"idempotency_key\", \"input\"}")
    unknown = sorted(set(document) - RUN_KEYS)
    if unknown:
        raise InvalidArgument(f"body has unknown keys: {', '.join(unknown)[:200]} (allowed: "
                              f"{', '.join(sorted(RUN_KEYS))})")
    key = document.get("idempotency_key", "")
    key = "" if key is None else key
    if not isinstance(key, str):
        raise InvalidArgument("idempotency_key must be a string")
    run_input = document.get("input", {})
    run_input = {} if run_input is None else run_input
    if not isinstance(run_input, dict):
        raise InvalidArgument("input must be a JSON object")
    metadata = document.get("metadata", {})
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InvalidArgument("metadata must be a JSON object")
    flat = {str(k): v if isinstance(v, str) else templating.encode_json(v)
            for k, v in run_input.items()}
    original = None if all(isinstance(v, str) for v in run_input.values()) else run_input
    return key, flat, original, metadata


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than limits.max_payload_bytes ({limit} bytes)")


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status,
                             headers=headers)


def rfc3339(timestamp: float) -> str | None:
    if not timestamp:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _workflow(orchestrator: Orchestrator, workflow_id: str) -> dict[str, Any]:
    workflow = await orchestrator.workflows.get(workflow_id)
    created = await orchestrator.workflows.created_times([workflow_id])
    return workflow_json(workflow, created.get(workflow_id, workflow.created_at))


def workflow_json(workflow: Workflow, first_created: float) -> dict[str, Any]:
    """A saved workflow as the composer reads it: its typed graph, or its steps."""
    out: dict[str, Any] = {
        "id": workflow.id, "name": workflow.name, "description": workflow.description,
        "tags": [], "tenant": "", "version": "", "revision": workflow.version,
        "created_at": rfc3339(first_created), "updated_at": rfc3339(workflow.created_at)}
    graph = workflow.spec.graph
    if graph is not None:
        out.update(graph.document)
        out.setdefault("edges", [])
    else:
        out["steps"] = [step.canonical() for step in workflow.spec.steps]
    return out


def workflow_summary(workflow: Workflow, first_created: float) -> dict[str, Any]:
    full = workflow_json(workflow, first_created)
    spec = workflow.spec
    edges = (len(full["edges"]) if spec.graph is not None
             else sum(len(step.depends_on) for step in spec.steps))
    return {key: full[key] for key in ("id", "name", "description", "tags", "tenant", "version",
                                       "revision", "created_at", "updated_at")} | {
        "node_count": len(spec.steps), "edge_count": edges}


async def _run(orchestrator: Orchestrator, run: Run) -> dict[str, Any]:
    workflow = await orchestrator.workflows.get(run.workflow_id, run.version)
    tasks = await orchestrator.workflows.step_tasks(run)
    return run_json(run, workflow, {step: task.attempts for step, task in tasks.items()})


def run_json(run: Run, workflow: Workflow, attempts: dict[str, int]) -> dict[str, Any]:
    """A run in the original's JSON shape (see the module's docstring for the mapping)."""
    graph = workflow.spec.graph
    nodes = {node["id"]: node for node in graph.document.get("nodes", [])} if graph else {}
    steps = []
    for step_id in workflow.spec.order():
        spec = workflow.spec.step(step_id)
        step = run.steps[step_id]
        result: Any = step.result
        if not spec.runs_task and step.status == StepStatus.COMPLETED:
            result = spec.config_object
        tries = attempts.get(step_id, 0)
        if not spec.runs_task and step.status.terminal and step.status != StepStatus.SKIPPED:
            tries = 1
        steps.append({
            "node_id": step_id, "name": nodes.get(step_id, {}).get("name") or step_id,
            "type": spec.kind, "status": STEP_STATUS[step.status], "attempts": tries,
            "started_at": rfc3339(step.started_at), "completed_at": rfc3339(step.finished_at),
            "result": result, "error": step.error, "task_id": step.task_id,
            "class": spec.task_class})
    doc_version = graph.document.get("version") if graph else ""
    return {
        "id": run.run_id, "workflow_id": run.workflow_id, "workflow_name": workflow.name,
        "workflow_version": doc_version or str(run.version), "workflow_revision": run.version,
        "status": RUN_STATUS[run.status], "created_at": rfc3339(run.created_at),
        "updated_at": rfc3339(run.updated_at), "completed_at": rfc3339(run.finished_at),
        "input": run.original_input if run.original_input is not None else run.input,
        "metadata": run.metadata, "idempotency_key": run.idempotency_key, "steps": steps,
        "output": run.output, "error": run.error}
