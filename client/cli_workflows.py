"""`agent-infra workflow create|run|watch|list`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    Context,
    OperationFailed,
    add_command,
    add_command_group,
    parse_assignments,
    read_text,
)
from .cli_output import WorkflowDisplay, format_time

if TYPE_CHECKING:
    from .orchestrator import OrchestratorClient
    from .orchestrator_models import WorkflowStatus

__all__ = ["register"]

SPEC_EXAMPLE = """\
{"steps": [
  {"id": "fetch", "class": "cpu_short", "payload": {"command": "echo {{ input.url }}"}},
  {"id": "count", "depends_on": ["fetch"],
   "payload": {"command": "echo '{{ steps.fetch.result.stdout }}' | wc -c"}}
]}"""


def register(subparsers: Any) -> None:
    commands = add_command_group(
        subparsers, "workflow", help="create, run, watch and list workflows (DAGs of tasks)",
        description="Workflows: a DAG of steps, each a task.",
        examples="""
            agent-infra workflow create etl etl.json
            agent-infra workflow run etl --input url=https://example.org --watch""")

    create = add_command(
        commands, "create", cmd_create,
        help="register a workflow from a JSON spec (the same spec again is idempotent)",
        description="Register a workflow. FILE is its JSON spec (`-`: stdin), e.g.\n\n"
                    + SPEC_EXAMPLE + "\n\nA different spec under the same id is a new "
                    "version. Prints the workflow id and version.",
        examples="""
            agent-infra workflow create etl etl.json --name "nightly ETL"
            cat etl.json | agent-infra workflow create etl - --json""")
    create.add_argument("workflow_id", metavar="ID")
    create.add_argument("file", metavar="FILE", help="the JSON spec (`-`: stdin)")
    create.add_argument("--name", default="")
    create.add_argument("--description", default="")

    run = add_command(
        commands, "run", cmd_run,
        help="start a run of a workflow (and with --watch, follow it)",
        description="""
            Start a run and print its id. With --key, starting again with the same key
            returns the same run. With --watch, follow the run until it ends; the exit code
            is then 0 when it completed, 1 when it failed.""",
        examples="""
            agent-infra workflow run etl --input url=https://example.org
            agent-infra workflow run etl --key nightly-2024-11-27 --watch
            RUN=$(agent-infra workflow run etl) && agent-infra workflow watch "$RUN\"""")
    run.add_argument("workflow_id", metavar="ID")
    run.add_argument("--key", default="", metavar="KEY", help="idempotency key")
    run.add_argument("--input", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="run input (`{{ input.KEY }}` in step payloads); values parsed as "
                          "JSON when they are JSON")
    run.add_argument("--watch", action="store_true", help="follow the run until it ends")

    watch = add_command(
        commands, "watch", cmd_watch,
        help="follow a workflow run until it ends; the exit code follows the run's",
        examples="""
            agent-infra workflow watch run-7c1d
            agent-infra workflow watch run-7c1d --json     # one JSON line per change""")
    watch.add_argument("run_id", metavar="RUN_ID")

    add_command(
        commands, "list", cmd_list,
        help="list workflows (latest version of each)",
        examples="""
            agent-infra workflow list
            agent-infra workflow list --json | jq '.[].workflow_id'""")


async def cmd_create(ctx: Context) -> int:
    args = ctx.args
    spec = read_text(args.file, "workflow spec")
    async with ctx.orchestrator() as orch:
        result = await orch.create_workflow(args.workflow_id, spec, name=args.name,
                                            description=args.description)
    if ctx.out.json_mode:
        ctx.out.json_doc(result)
    if not result.success:
        raise OperationFailed(f"workflow not created: {result.error or 'no reason given'}")
    if not ctx.out.json_mode:
        ctx.out.line(f"{result.workflow_id} version {result.version}")
    return EXIT_OK


async def watch_run(ctx: Context, orch: OrchestratorClient, run_id: str) -> int:
    last: WorkflowStatus | None = None
    with WorkflowDisplay(ctx.out, run_id) as display:
        stream: AsyncIterator[WorkflowStatus] = orch.stream_workflow_status(run_id)
        async for status in stream:
            display.update(status)
            last = status
    if last is None:
        raise OperationFailed(f"run {run_id}: the stream ended without a state")
    if not ctx.out.json_mode:
        # The leaf steps' output: their stdout as it is (like `run`), else every key.
        stdout = {key: value for key, value in last.output.items() if key.endswith(".stdout")}
        if stdout:
            for _, value in sorted(stdout.items()):
                if value:
                    ctx.out.stdout.write(value if value.endswith("\n") else value + "\n")
            ctx.out.stdout.flush()
        else:
            for key, value in sorted(last.output.items()):
                ctx.out.line(f"{key}={value}")
        summary = f"run {run_id} {last.status} ({last.steps_completed}/{last.total_steps} steps)"
        if last.error:
            summary += f": {last.error}"
        ctx.out.note(summary)
    return EXIT_OK if last.status == "completed" else EXIT_FAILED


async def cmd_run(ctx: Context) -> int:
    args = ctx.args
    run_input = parse_assignments(args.input, "--input")
    async with ctx.orchestrator() as orch:
        started = await orch.start_workflow_run(args.workflow_id, idempotency_key=args.key,
                                                input=run_input)
        if not started.success:
            if ctx.out.json_mode:
                ctx.out.json_doc(started)
            raise OperationFailed(f"run not started: {started.error or 'no reason given'}")
        if ctx.out.json_mode:
            # --watch: the start as the first JSON line, then the run's updates.
            if args.watch:
                ctx.out.json_line(started)
            else:
                ctx.out.json_doc(started)
        elif args.watch:
            ctx.out.note(f"run {started.run_id}" + ("" if started.created
                                                      else " (existing run for this key)"))
        else:
            ctx.out.line(started.run_id)
            if not started.created:
                ctx.out.note("an existing run for this key (not started again)")
        if not args.watch:
            return EXIT_OK
        return await watch_run(ctx, orch, started.run_id)


async def cmd_watch(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        return await watch_run(ctx, orch, ctx.args.run_id)


async def cmd_list(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        workflows = await orch.list_workflows()
    if ctx.out.json_mode:
        ctx.out.json_doc(workflows)
        return EXIT_OK
    ctx.out.table(["workflow", "version", "steps", "created", "name", "description"],
                  [[w.workflow_id, w.version, w.total_steps, format_time(w.created_at), w.name,
                    w.description] for w in workflows], empty="no workflows")
    return EXIT_OK
