"""Workflows: the list, a workflow's graph with a run's steps coloured live, runs, creating one.

GET  /console/workflows                       every workflow (latest revision), newest first
GET  /console/workflows/new                   the create form (JSON, either shape)
POST /console/workflows/new                   create (form: spec, csrf); errors inline, 400
GET  /console/workflows/{id}?version=&run=    the graph (inline SVG, left to right), the
                                              chosen run's step states (live), its versions,
                                              runs, the start form and the spec as JSON
POST /console/workflows/{id}/runs             start a run (form: input JSON, idempotency_key)
GET  /console/workflow-runs/{run_id}          a run: per-step status, timings, results
GET  /console/workflow-runs/{run_id}/state    JSON {run_id, status, error, steps: {id: status}}

Create and start go through the same domain calls, so the same validation, as the API's POST
/workflows and POST /workflows/{id}/runs: the domain's error message is shown next to the form.
Step colours follow the console's event stream (workflow_step_* and workflow_completed/failed
events of the run); the script re-reads the state each time the stream (re)connects, so an
event between the page's render and the stream's start is never missed.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from agent_infra.runtime.errors import DomainError, NotFound, shorten
from agent_infra.runtime.parsing import parse_int
from aiohttp import web

from ..workflows.engine import WorkflowEngine
from ..workflows.records import Run, Workflow
from . import graph, workflows_view
from .shell import PREFIX, Console, json_error

BASE = PREFIX + "/workflows"
RUNS = PREFIX + "/workflow-runs"
MAX_FORM_CHARS = 1024 * 1024


def workflow_url(workflow_id: str, **query: str) -> str:
    url = f"{BASE}/{quote(workflow_id, safe='')}"
    extra = "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items() if value)
    return f"{url}?{extra}" if extra else url


def run_url(run_id: str) -> str:
    return f"{RUNS}/{quote(run_id, safe='')}"


def routes(console: Console) -> list[web.RouteDef]:
    def engine() -> WorkflowEngine:
        return console.domain().workflows

    async def chosen_run(run_id: str, workflow_id: str) -> Run | None:
        if not run_id:
            return None
        run = await engine().get_run(run_id)
        if run.workflow_id != workflow_id:
            raise NotFound(f"workflow run '{run_id}' is not a run of '{workflow_id}'")
        return run

    async def index(request: web.Request) -> web.StreamResponse:
        workflows = await engine().list()
        created = await engine().created_times([w.id for w in workflows])
        items = sorted(workflows, key=lambda w: (w.created_at, w.id), reverse=True)
        return console.render(request, "workflows.html", section="workflows", title="Workflows",
                              items=items, created=created, workflow_url=workflow_url)

    def new_page(request: web.Request, spec: str, error: str, status: int = 200
                 ) -> web.Response:
        return console.render(request, "workflows_new.html", section="workflows",
                              title="New workflow", spec=spec, error=error, status=status,
                              classes=sorted(engine().known_classes))

    async def new_form(request: web.Request) -> web.StreamResponse:
        return new_page(request, workflows_view.EXAMPLE_SPEC, "")

    async def create(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        spec = str(form.get("spec", ""))
        if len(spec) > MAX_FORM_CHARS:
            return new_page(request, "", f"spec is larger than {MAX_FORM_CHARS} characters",
                            413)
        try:
            workflow_id, _, _ = await engine().create("", "", "", spec)
        except DomainError as exc:
            return new_page(request, spec, shorten(str(exc), 1024), 400)
        raise web.HTTPSeeOther(workflow_url(workflow_id))

    async def detail(request: web.Request, *, error: str = "", form_input: str = "",
                     form_key: str = "", status: int = 200) -> web.StreamResponse:
        workflow_id = request.match_info["id"]
        try:
            versions = await engine().history(workflow_id)
            run = await chosen_run(request.query.get("run", ""), workflow_id)
            workflow = _chosen_version(request, versions, run)
        except DomainError as exc:
            return _error_page(console, request, exc)
        runs = await engine().runs(workflow_id, workflows_view.RUNS_SHOWN)
        if run is None and runs and "run" not in request.query:
            run = runs[0] if runs[0].version == workflow.version else None
        first = min(w.created_at for w in versions)
        input_names = sorted(workflow.spec.input_names())
        return console.render(
            request, "workflows_detail.html", section="workflows",
            title=workflow.name or workflow.id, workflow=workflow, versions=versions,
            layout=graph.layout(workflow.spec), graph_sizes=graph, run=run,
            states=run.step_states() if run else {}, runs=runs,
            spec=workflows_view.spec_text(workflow, first), error=error, status=status,
            form_input=form_input or _input_example(input_names), form_key=form_key,
            event_types=",".join(workflows_view.STEP_EVENT_TYPES), rendered_at=time.time(),
            workflow_url=workflow_url, run_url=run_url, state_url=_state_url)

    async def detail_page(request: web.Request) -> web.StreamResponse:
        return await detail(request)

    async def start(request: web.Request) -> web.StreamResponse:
        workflow_id = request.match_info["id"]
        form = await request.post()
        input_text = str(form.get("input", ""))[:MAX_FORM_CHARS]
        key = str(form.get("idempotency_key", ""))[:MAX_FORM_CHARS]
        try:
            key, flat, original, metadata = workflows_view.run_form(input_text, key)
            run, _ = await engine().start_run(workflow_id, key, flat, original_input=original,
                                              metadata=metadata)
        except NotFound as exc:
            return _error_page(console, request, exc)
        except DomainError as exc:
            return await detail(request, error=shorten(str(exc), 1024), form_input=input_text,
                                form_key=key, status=400)
        raise web.HTTPSeeOther(workflow_url(workflow_id, run=run.run_id))

    async def run_page(request: web.Request) -> web.StreamResponse:
        try:
            run = await engine().get_run(request.match_info["run_id"])
            workflow = await engine().get(run.workflow_id, run.version)
        except DomainError as exc:
            return _error_page(console, request, exc)
        tasks = await engine().step_tasks(run)
        rows = workflows_view.step_rows(run, workflow,
                                        {step: task.attempts for step, task in tasks.items()})
        return console.render(
            request, "workflows_run.html", section="workflows", title=f"Run {run.run_id}",
            run=run, workflow=workflow, rows=rows, layout=graph.layout(workflow.spec),
            graph_sizes=graph, states=run.step_states(),
            input=workflows_view.shown_json(run.original_input if run.original_input
                                            is not None else run.input),
            output=workflows_view.shown_json(run.output),
            event_types=",".join(workflows_view.STEP_EVENT_TYPES), rendered_at=time.time(),
            workflow_url=workflow_url, run_url=run_url, state_url=_state_url)

    async def run_state(request: web.Request) -> web.StreamResponse:
        try:
            run = await engine().get_run(request.match_info["run_id"])
        except DomainError as exc:
            return json_error(404 if isinstance(exc, NotFound) else 400, str(exc))
        return web.json_response(workflows_view.run_state(run),
                                 headers={"Cache-Control": "no-store"})

    return [
        web.get(BASE, console.page(index)),
        web.get(BASE + "/new", console.page(new_form)),
        web.post(BASE + "/new", console.action(create)),
        web.get(BASE + "/{id}", console.page(detail_page)),
        web.post(BASE + "/{id}/runs", console.action(start)),
        web.get(RUNS + "/{run_id}", console.page(run_page)),
        web.get(RUNS + "/{run_id}/state", console.api(run_state)),
    ]


def _state_url(run_id: str) -> str:
    return run_url(run_id) + "/state"


def _chosen_version(request: web.Request, versions: list[Workflow], run: Run | None) -> Workflow:
    text = request.query.get("version", "")
    if text:
        try:
            wanted = parse_int(text, "version", 1, 2**31 - 1)
        except ValueError as exc:
            raise NotFound(str(exc)) from None
    elif run is not None:
        wanted = run.version
    else:
        return versions[0]
    for workflow in versions:
        if workflow.version == wanted:
            return workflow
    raise NotFound(f"workflow '{versions[0].id}' has no version {wanted} "
                   f"(latest is {versions[0].version})")


def _input_example(names: list[str]) -> str:
    if not names:
        return "{}"
    return "{" + ", ".join(f'"{name}": ""' for name in names) + "}"


def _error_page(console: Console, request: web.Request, exc: DomainError) -> web.Response:
    status = 404 if isinstance(exc, NotFound) else 400
    return console.render(request, "workflows_error.html", section="workflows",
                          title="Not found" if status == 404 else "Bad request",
                          message=shorten(str(exc), 300), status=status)
