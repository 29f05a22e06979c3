"""`agent-infra` commands for tasks and events: submit, run, wait, tasks, cancel, events."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    Context,
    OperationFailed,
    UsageError,
    add_command,
    non_negative_int,
    parse_assignments,
    parse_since,
    positive_float,
    read_json_object,
)
from .cli_output import (
    STATE_STYLES,
    format_duration_ms,
    format_time,
    format_when,
    to_jsonable,
)

if TYPE_CHECKING:
    from .orchestrator import OrchestratorClient
    from .orchestrator_models import SubmitResult, SystemEvent, TaskStatus

__all__ = ["register"]

#: Without --follow, `events` ends once no event has arrived for this long (the replay is over).
EVENTS_IDLE_SECONDS = 1.0
#: Without --follow and --since, `events` shows this much history.
EVENTS_DEFAULT_SINCE = "1h"


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    payload = parser.add_argument_group("payload (merged in this order: file, --set, COMMAND)")
    payload.add_argument("command", nargs="*", metavar="COMMAND",
                         help="the task's command (payload key `command`, run as is); put "
                              "it after `--`. A lone `-` reads a JSON payload object from stdin")
    payload.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a payload value, parsed as JSON when it is JSON, else taken as "
                              "text (repeatable)")
    payload.add_argument("--payload-file", metavar="FILE",
                         help="a JSON object with the payload (`-`: stdin)")
    task = parser.add_argument_group("task")
    task.add_argument("--class", dest="task_class", default="cpu_short", metavar="CLASS",
                      help="task class: cpu_short (default), cpu_long, gpu, gpu_slurm, ...")
    task.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    task.add_argument("--id", dest="task_id", default="", metavar="TASK_ID",
                      help="the task's id (default: generated); the same id and content "
                           "again is the same task")
    task.add_argument("--workflow-id", default="", metavar="ID",
                      help="workflow the task belongs to")
    task.add_argument("--timeout-seconds", type=non_negative_int, default=0, metavar="N",
                      help="the task's time limit (default: the class's)")
    task.add_argument("--max-attempts", type=non_negative_int, default=0, metavar="N",
                      help="executions allowed (default: the class's)")


def register(subparsers: Any) -> None:
    submit = add_command(
        subparsers, "submit", cmd_submit,
        help="queue a task and print its id",
        description="""
            Queue one task. The payload comes from --payload-file (a JSON object, `-` for
            stdin), then --set KEY=VALUE, then a command after `--`. Prints the task id
            (with --json: the whole answer).""",
        examples="""
            agent-infra submit -- sh -c 'echo hello'
            agent-infra submit --set command='echo hi' --set env='{"A": "1"}' --priority 5
            agent-infra submit --payload-file task.json --class cpu_long --id nightly-42
            echo '{"command": ["date"]}' | agent-infra submit -
            ID=$(agent-infra submit -- sleep 30) && agent-infra wait "$ID\"""")
    _add_submit_options(submit)

    run = add_command(
        subparsers, "run", cmd_run,
        help="submit a task and wait for it; the exit code follows the task's",
        description="""
            Submit a task (same options as `submit`) and wait for it to finish. Prints the
            task's stdout to stdout and its stderr to stderr; exits 0 when the task completed,
            1 when it failed or was cancelled (or --timeout passed first).""",
        examples="""
            agent-infra run -- sh -c 'echo hello from a container'
            agent-infra run --set command='["uname", "-a"]' --class cpu_short
            agent-infra run --json -- false ; echo "exit $?"      # exit 1""")
    _add_submit_options(run)
    run.add_argument("--wait-timeout", type=positive_float, metavar="SECONDS",
                     help="stop waiting after this long (the task keeps running; exit 1)")

    wait = add_command(
        subparsers, "wait", cmd_wait,
        help="wait for a task to finish; the exit code follows the task's",
        examples="""
            agent-infra wait task-0f1e2d
            agent-infra wait task-0f1e2d --wait-timeout 60 --json""")
    wait.add_argument("task_id", metavar="TASK_ID")
    wait.add_argument("--wait-timeout", type=positive_float, metavar="SECONDS",
                      help="stop waiting after this long (exit 1)")

    tasks = add_command(
        subparsers, "tasks", cmd_tasks,
        help="list tasks, newest first",
        examples="""
            agent-infra tasks
            agent-infra tasks --status failed --class cpu_short --limit 100
            agent-infra tasks --status pending --status running --json""")
    tasks.add_argument("--status", action="append", default=[], metavar="STATUS",
                       help="pending, running, completed, failed or cancelled (repeatable, "
                            "or comma-separated)")
    tasks.add_argument("--class", dest="task_class", default="", metavar="CLASS")
    tasks.add_argument("--workflow", default="", metavar="WORKFLOW_ID")
    tasks.add_argument("--limit", type=non_negative_int, default=50, metavar="N",
                       help="at most N tasks (default 50; 0: all)")

    cancel = add_command(
        subparsers, "cancel", cmd_cancel,
        help="cancel a pending or running task",
        description="""
            Cancel a pending or running task (its container is stopped). Exits 0 when the
            task is cancelled (by this call or an earlier one), 1 when it had already
            completed or failed.""",
        examples="""
            agent-infra cancel task-0f1e2d""")
    cancel.add_argument("task_id", metavar="TASK_ID")

    events = add_command(
        subparsers, "events", cmd_events,
        help="print the orchestrator's events (task_submitted, task_completed, ...)",
        description=f"""
            Print stored events since TIME, then (with -f) new ones as they happen.
            TIME is unix seconds, an ISO datetime (local time unless it names a zone) or a
            duration meaning that long ago (30s, 10m, 2h, 1d). Without -f the default is
            --since {EVENTS_DEFAULT_SINCE}; with -f and no --since only new events print.""",
        examples="""
            agent-infra events --since 10m
            agent-infra events -f --type task_failed --type task_completed
            agent-infra events --since 2024-11-27T09:00:00 --json | jq .resource_id""")
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    events.add_argument("--since", metavar="TIME", help="events at or after TIME")
    events.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                        help="only this event type (repeatable)")


# --- submit / run / wait --------------------------------------------------------------------------


def build_payload(args: argparse.Namespace) -> dict[str, object]:
    payload: dict[str, object] = {}
    command = list(args.command)
    from_stdin = command == ["-"]
    if from_stdin and args.payload_file:
        raise UsageError("give the payload on stdin (`-`) or with --payload-file, not both")
    if from_stdin:
        payload.update(read_json_object("-", "payload from"))
        command = []
    if args.payload_file:
        payload.update(read_json_object(args.payload_file, "--payload-file"))
    payload.update(parse_assignments(args.set, "--set"))
    if command:
        payload["command"] = command
    return payload


async def _submit(ctx: Context, orch: OrchestratorClient,
                  payload: dict[str, object]) -> SubmitResult:
    args = ctx.args
    return await orch.submit_task(
        args.task_id, payload, task_class=args.task_class, priority=args.priority,
        workflow_id=args.workflow_id, timeout_seconds=args.timeout_seconds,
        max_attempts=args.max_attempts)


def _accepted(result: SubmitResult) -> str:
    if not result.success:
        raise OperationFailed(f"task not accepted: {result.error or 'no reason given'}")
    return result.task_id


async def cmd_submit(ctx: Context) -> int:
    payload = build_payload(ctx.args)  # usage errors before any connection
    async with ctx.orchestrator() as orch:
        result = await _submit(ctx, orch, payload)
    if ctx.out.json_mode:
        ctx.out.json_doc(result)
    task_id = _accepted(result)
    if not ctx.out.json_mode:
        ctx.out.line(task_id)
    return EXIT_OK


async def wait_for_task(ctx: Context, orch: OrchestratorClient, task_id: str,
                        timeout: float | None) -> TaskStatus:
    """The task's status once it is finished, or as it is when `timeout` passes.

    Rides over an orchestrator restart (the client reconnects and follows the task again).
    """
    spinner = (ctx.out.err_console.status(f"waiting for task {task_id} ...")
               if not ctx.out.json_mode and ctx.out.err_console.is_terminal
               else contextlib.nullcontext())
    with spinner:
        try:
            return await orch.wait_for_task(task_id, timeout=timeout)
        except TimeoutError:
            return await orch.get_task_status(task_id)


def report_task(ctx: Context, status: TaskStatus, timeout: float | None) -> int:
    out = ctx.out
    finished = status.status in {"completed", "failed", "cancelled"}
    if out.json_mode:
        out.json_doc(status)
    else:
        result = dict(status.result)
        stdout, stderr = result.pop("stdout", None), result.pop("stderr", None)
        if stdout:
            out.stdout.write(stdout if stdout.endswith("\n") else stdout + "\n")
            out.stdout.flush()
        if stderr:
            out.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
            out.stderr.flush()
        if stdout is None and stderr is None:
            for key, value in sorted(result.items()):
                out.line(f"{key}={value}")
        exit_code = status.result.get("exit_code")
        summary = f"task {status.task_id} {status.status}"
        if status.duration_ms:
            summary += f" in {format_duration_ms(status.duration_ms)}"
        if exit_code is not None:
            summary += f" (exit code {exit_code})"
        if status.error and status.error != f"exit code {exit_code}":
            summary += f": {status.error}"
        if status.attempts > 1:
            summary += f" after {status.attempts} attempts"
        if finished:
            if out.err_console.is_terminal:
                style = STATE_STYLES.get(status.status, "")
                out.err_console.print(summary, style=style, markup=False)
            else:
                out.note(summary)
    if not finished:
        out.error(f"task {status.task_id} is still {status.status} after {timeout:g} s "
                  f"(it keeps running; `agent-infra wait {status.task_id}` waits again)")
        return EXIT_FAILED
    return EXIT_OK if status.status == "completed" else EXIT_FAILED


async def cmd_run(ctx: Context) -> int:
    payload = build_payload(ctx.args)
    async with ctx.orchestrator() as orch:
        task_id = _accepted(await _submit(ctx, orch, payload))
        if not ctx.out.json_mode and ctx.out.err_console.is_terminal:
            ctx.out.note(f"submitted {task_id}")
        status = await wait_for_task(ctx, orch, task_id, ctx.args.wait_timeout)
    return report_task(ctx, status, ctx.args.wait_timeout)


async def cmd_wait(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        status = await wait_for_task(ctx, orch, ctx.args.task_id, ctx.args.wait_timeout)
    return report_task(ctx, status, ctx.args.wait_timeout)


# --- tasks / cancel -------------------------------------------------------------------------------


async def cmd_tasks(ctx: Context) -> int:
    args = ctx.args
    statuses = [s.strip() for item in args.status for s in item.split(",") if s.strip()]
    limit = args.limit
    found: list[Any] = []
    async with ctx.orchestrator() as orch:
        token = ""
        while True:
            size = 1000 if limit == 0 else min(1000, limit - len(found))
            page = await orch.list_tasks(statuses=statuses, task_class=args.task_class,
                                         workflow_id=args.workflow, page_size=size,
                                         page_token=token)
            found.extend(page.tasks)
            token = page.next_page_token
            if not token or (limit and len(found) >= limit):
                break
    found = found[:limit] if limit else found
    if ctx.out.json_mode:
        ctx.out.json_doc(found)
        return EXIT_OK
    short = ctx.out.rich
    ctx.out.table(
        ["task", "status", "class", "pri", "tries", "submitted", "completed", "error"],
        [[t.task_id, t.status, t.task_class, t.priority, t.attempts,
          format_when(t.submitted_at, short=short), format_when(t.completed_at, short=short),
          t.error.replace("\n", " ")]
         for t in found],
        state_column=1, empty="no tasks")
    return EXIT_OK


async def cmd_cancel(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        result = await orch.cancel_task(ctx.args.task_id)
    if ctx.out.json_mode:
        ctx.out.json_doc({"task_id": ctx.args.task_id, **_fields(result)})
    elif result.success:
        ctx.out.line(f"{ctx.args.task_id} {result.status}")
    if not result.success:
        why = result.error or f"it had already ended ({result.status})"
        ctx.out.error(f"task {ctx.args.task_id} not cancelled: {why}")
        return EXIT_FAILED
    return EXIT_OK


def _fields(value: Any) -> dict[str, Any]:
    converted: dict[str, Any] = to_jsonable(value)
    return converted


# --- events ---------------------------------------------------------------------------------------


def format_event(event: SystemEvent) -> str:
    data = " ".join(f"{key}={value}" for key, value in sorted(event.data.items()))
    return f"{format_time(event.timestamp)}  {event.event_type:<24} {event.resource_id}  " \
           f"{data}".rstrip()


async def cmd_events(ctx: Context) -> int:
    args = ctx.args
    since_text = args.since or (None if args.follow else EVENTS_DEFAULT_SINCE)
    since = parse_since(since_text) if since_text else None
    out = ctx.out
    async with ctx.orchestrator() as orch:
        stream: AsyncIterator[SystemEvent] = orch.stream_events(args.types, since=since)
        iterator = aiter(stream)
        try:
            while True:
                try:
                    if args.follow:
                        event = await anext(iterator)
                    else:
                        event = await asyncio.wait_for(anext(iterator), EVENTS_IDLE_SECONDS)
                except (StopAsyncIteration, TimeoutError):
                    break
                if out.json_mode:
                    out.json_line(event)
                elif out.rich:
                    style = STATE_STYLES.get(event.event_type.rsplit("_", 1)[-1], "")
                    out.console.print(format_event(event), style=style, markup=False,
                                      highlight=False)
                else:
                    out.line(format_event(event))
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
    return EXIT_OK

