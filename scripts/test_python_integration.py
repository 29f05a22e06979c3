#!/usr/bin/env python3
"""End-to-end check of a live agent-infra stack through the Python client.

    python scripts/test_python_integration.py [--orchestrator HOST:PORT]
        [--env-manager HOST:PORT] [--class cpu_short] [--timeout 120] [--connect-timeout 5]

Runs against daemons that are already up (it starts nothing) and prints one line per check,
``PASS name (details)`` or ``FAIL name: reason``, then ``N passed, M failed``:

  orchestrator-health  Health answers, and reports itself and its dependencies SERVING.
  env-manager-health   env-manager answers GetResourceAvailability for --class.
  task                 submit_task + wait_for_task: a container of --class prints a random
                       token; the task must complete with exit code 0 and exactly that token
                       on stdout.
  workflow             a 3-step DAG (gen -> shout -> join, and gen -> join) whose payloads are
                       templates of the run's input, the parents' results and the run id; it is
                       created, run, and watched until it ends; the run must complete with the
                       expected output.
  events               StreamEvents since this script started: the task's and the workflow's
                       events (the step tasks' too), in order, and every event's seq one more
                       than the one before (no gap, no duplicate).

When the orchestrator cannot be reached, the checks that need it fail at once (no waiting). Every
wait is bounded: connecting by --connect-timeout, the task, the workflow and the event replay by
--timeout each.

Addresses: the options, else ORCHESTRATOR_GRPC_ADDR / ENV_MANAGER_GRPC_ADDR, else the defaults
(127.0.0.1:50052 / 127.0.0.1:50100). Exit status: 0 when every check passed, 1 otherwise, 2 for
a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent_infra import (
    AgentInfra,
    InfraError,
    InfraUnavailable,
    InvalidArgument,
    SystemEvent,
    TaskStatus,
    WorkflowStatus,
)

#: The workflow this script (re)creates. The same spec keeps its version, so repeated runs do
#: not pile up workflows; a different --class makes a new version.
WORKFLOW_ID = "python-integration-check"
TASK_EVENTS = ["task_submitted", "task_started", "task_completed"]
STEPS = ("gen", "shout", "join")


@dataclass
class Outcome:
    """What one check found: passed or not, and the details or the reason."""

    name: str
    passed: bool
    text: str

    def line(self) -> str:
        return f"PASS {self.name} ({self.text})" if self.passed \
            else f"FAIL {self.name}: {self.text}"


class CheckFailed(Exception):
    """A check's expectation did not hold; the message says which and what was seen."""


@dataclass
class Context:
    """What the checks share: the client, the options, and what earlier checks produced."""

    infra: AgentInfra
    task_class: str
    timeout: float
    started_at: float
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: Set by the health check when nothing answered on the orchestrator's address.
    orchestrator_unreachable: bool = False
    #: The task check's task id and final status, when it got that far.
    task_id: str = ""
    task_status: str = ""
    #: The workflow check's run id and final status, when it got that far.
    run_id: str = ""
    run_status: str = ""


async def run_check(name: str, check: Callable[[], Awaitable[str]]) -> Outcome:
    """Run one check; any failure (an expectation, an RPC error, a timeout) is its FAIL line."""
    try:
        return Outcome(name, True, await check())
    except CheckFailed as exc:
        return Outcome(name, False, str(exc))
    except InfraError as exc:
        return Outcome(name, False, f"{type(exc).__name__}: {exc}")
    except TimeoutError as exc:
        return Outcome(name, False, str(exc) or "timed out")
    except Exception as exc:  # a check script reports, it does not crash
        return Outcome(name, False, f"unexpected {type(exc).__name__}: {exc}")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- health -------------------------------------------------------------------------------------


async def check_orchestrator(ctx: Context) -> str:
    try:
        health = await ctx.infra.orchestrator.health()
    except InfraUnavailable as exc:
        ctx.orchestrator_unreachable = True
        raise CheckFailed(exc.details) from None
    states = ", ".join(f"{name} {state}" for name, state in sorted(health.services.items()))
    expect(health.healthy, f"the orchestrator at {ctx.infra.orchestrator.address} reports itself "
                           f"unhealthy: {states or 'no dependencies reported'}")
    return f"{ctx.infra.orchestrator.address}, version {health.version}; {states}"


async def check_env_manager(ctx: Context) -> str:
    address = ctx.infra.env.address
    try:
        found = await ctx.infra.env.get_resource_availability(ctx.task_class)
    except InfraUnavailable as exc:
        raise CheckFailed(exc.details) from None
    except InvalidArgument as exc:
        raise CheckFailed(f"env-manager at {address} has no usable workload class "
                          f"{ctx.task_class!r}: {exc.details}") from None
    hardware = found.hardware
    return (f"{address}; class {ctx.task_class}: {found.in_use}/{found.capacity} in use; host "
            f"{hardware.cpu_cores} CPUs, {hardware.memory_bytes / 2**30:.1f} GiB, "
            f"{len(hardware.gpus)} GPUs")


# --- a task -------------------------------------------------------------------------------------


async def check_task(ctx: Context) -> str:
    token = f"hello-{ctx.tag}"
    began = time.monotonic()
    submitted = await ctx.infra.submit_task(
        f"pyit-{ctx.tag}", {"command": ["sh", "-c", 'echo "$TOKEN"'], "env": {"TOKEN": token}},
        task_class=ctx.task_class)
    expect(submitted["success"], f"SubmitTask: {submitted['error']}")
    ctx.task_id = submitted["task_id"]
    final: TaskStatus = await ctx.infra.wait_for_task(ctx.task_id, timeout=ctx.timeout)
    ctx.task_status = final.status
    expect(final.status == "completed",
           f"task {ctx.task_id} ended {final.status}: {final.error or final.result}")
    exit_code = final.result.get("exit_code")
    stdout = final.result.get("stdout", "")
    expect(exit_code == "0", f"task {ctx.task_id}: exit code {exit_code!r}, expected '0'")
    expect(stdout == token + "\n",
           f"task {ctx.task_id}: stdout {stdout!r}, expected {token + chr(10)!r}")
    return (f"{ctx.task_id} completed in {time.monotonic() - began:.1f} s, "
            f"stdout {stdout.strip()!r}, attempts {final.attempts}")


# --- a workflow ---------------------------------------------------------------------------------


def workflow_spec(task_class: str) -> dict[str, Any]:
    """gen -> shout -> join, and gen -> join: templates of the input, parents' results, run id."""
    def step(step_id: str, script: str, env: dict[str, str], parents: list[str]) -> dict[str, Any]:
        return {"id": step_id, "class": task_class, "depends_on": parents,
                "payload": {"command": ["sh", "-c", script], "env": env}}

    return {"steps": [
        step("gen", 'printf "%s" "$WORD"', {"WORD": "{{ input.word }}"}, []),
        step("shout", """printf "%s" "$W" | tr 'a-z' 'A-Z'""",
             {"W": "{{ steps.gen.result.stdout }}"}, ["gen"]),
        step("join", 'printf "%s-%s@%s" "$A" "$B" "$RUN"',
             {"A": "{{ steps.gen.result.stdout }}", "B": "{{ steps.shout.result.stdout }}",
              "RUN": "{{ run.id }}"}, ["gen", "shout"]),
    ]}


async def check_workflow(ctx: Context) -> str:
    word = f"word{ctx.tag}"
    began = time.monotonic()
    created = await ctx.infra.create_workflow(
        WORKFLOW_ID, workflow_spec(ctx.task_class), name="python integration check",
        description="scripts/test_python_integration.py: a 3-step DAG with templates")
    expect(created.success, f"CreateWorkflow {WORKFLOW_ID}: {created.error}")
    started = await ctx.infra.start_workflow_run(WORKFLOW_ID, input={"word": word})
    expect(started.success and started.created,
           f"StartWorkflowRun {WORKFLOW_ID}: success={started.success} "
           f"created={started.created} {started.error}")
    ctx.run_id = started.run_id
    updates: list[WorkflowStatus] = []
    try:
        async with asyncio.timeout(ctx.timeout):
            async for update in ctx.infra.watch_workflow_run(started.run_id):
                updates.append(update)
    except TimeoutError:
        last = updates[-1] if updates else None
        seen = f"{last.status}, {last.steps_completed}/{last.total_steps} steps" if last \
            else "no update"
        raise CheckFailed(f"run {started.run_id} did not end within {ctx.timeout:g} s "
                          f"(last seen: {seen})") from None
    expect(bool(updates), f"run {started.run_id}: the status stream ended with no update")
    final = updates[-1]
    ctx.run_status = final.status
    expect(final.status == "completed", f"run {started.run_id} ended {final.status} at step "
                                        f"{final.current_step!r}: {final.error}")
    expect((final.steps_completed, final.total_steps) == (3, 3),
           f"run {started.run_id}: {final.steps_completed}/{final.total_steps} steps completed, "
           f"expected 3/3")
    expected = f"{word}-{word.upper()}@{started.run_id}"
    got = final.output.get("join.stdout")
    expect(got == expected, f"run {started.run_id}: output join.stdout {got!r}, "
                            f"expected {expected!r} (output: {final.output})")
    return (f"{WORKFLOW_ID} v{created.version}, run {started.run_id} completed 3/3 steps in "
            f"{time.monotonic() - began:.1f} s, {len(updates)} status updates, "
            f"join.stdout {got!r}")


# --- events -------------------------------------------------------------------------------------


def expected_events(ctx: Context) -> dict[str, list[str]]:
    """resource_id -> the event types it must have, in order (task_retrying left out).

    Only what earlier checks saw happen is expected: a task that never finished must have been
    submitted, no more.
    """
    wanted: dict[str, list[str]] = {}
    if ctx.task_id:
        wanted[ctx.task_id] = TASK_EVENTS if ctx.task_status == "completed" \
            else TASK_EVENTS[:1]
    if ctx.run_id:
        if ctx.run_status == "completed":
            wanted[ctx.run_id] = ["workflow_started", *(
                kind for _ in STEPS
                for kind in ("workflow_step_started", "workflow_step_completed")),
                "workflow_completed"]
            for step_id in STEPS:
                wanted[f"{ctx.run_id}:{step_id}"] = TASK_EVENTS
        else:
            wanted[ctx.run_id] = ["workflow_started"]
    return wanted


async def check_events(ctx: Context) -> str:
    wanted = expected_events(ctx)
    expect(bool(wanted), "nothing to look for: neither a task nor a workflow run was started")
    seen: dict[str, list[SystemEvent]] = {resource: [] for resource in wanted}
    steps_of_run: list[str] = []
    previous_seq: int | None = None
    first_seq: int | None = None
    count = 0

    def complete() -> bool:
        return all(len([e for e in seen[r] if e.event_type != "task_retrying"]) >= len(kinds)
                   for r, kinds in wanted.items())

    try:
        async with asyncio.timeout(ctx.timeout):
            async for event in ctx.infra.stream_events(since=ctx.started_at):
                count += 1
                seq_text = event.data.get("seq", "")
                expect(seq_text.isdigit(), f"event {event.event_type} {event.resource_id} has "
                                           f"no numeric seq: {event.data}")
                seq = int(seq_text)
                if previous_seq is not None:
                    expect(seq == previous_seq + 1,
                           f"seq {seq} follows {previous_seq}: events are not consecutive "
                           f"({event.event_type} {event.resource_id})")
                first_seq = seq if first_seq is None else first_seq
                previous_seq = seq
                if event.resource_id in seen:
                    seen[event.resource_id].append(event)
                    if event.event_type.startswith("workflow_step_"):
                        steps_of_run.append(event.data.get("step_id", "?"))
                if complete():
                    break
    except TimeoutError:
        missing = {r: [e.event_type for e in seen[r]] for r, kinds in wanted.items()
                   if len(seen[r]) < len(kinds)}
        raise CheckFailed(f"within {ctx.timeout:g} s, {count} events since the script started "
                          f"did not include all expected ones; seen so far for the incomplete "
                          f"resources: {missing}") from None
    for resource, kinds in wanted.items():
        got = [e.event_type for e in seen[resource] if e.event_type != "task_retrying"]
        expect(got[:len(kinds)] == kinds, f"events of {resource}: {got}, expected {kinds}")
    if ctx.run_id in wanted and ctx.run_status == "completed":
        expected_order = [step for step in STEPS for _ in (0, 1)]
        expect(steps_of_run == expected_order, f"step events of {ctx.run_id} in order "
                                               f"{steps_of_run}, "
                                        f"expected {expected_order}")
    retries = sum(e.event_type == "task_retrying" for events in seen.values() for e in events)
    mine = sum(len(events) for events in seen.values())
    return (f"{mine} events of this script's task and run among {count} since it started, "
            f"seq {first_seq}..{previous_seq} consecutive"
            + (f", {retries} task_retrying" if retries else ""))


# --- main ---------------------------------------------------------------------------------------


async def run_checks(args: argparse.Namespace) -> list[Outcome]:
    ctx = Context(
        AgentInfra(orchestrator_address=args.orchestrator, env_manager_address=args.env_manager,
                   connect_timeout=args.connect_timeout),
        task_class=args.task_class, timeout=args.timeout, started_at=time.time())
    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        print(outcome.line(), flush=True)

    print(f"checking orchestrator {ctx.infra.orchestrator.address}, env-manager "
          f"{ctx.infra.env.address} (class {ctx.task_class}, timeout {ctx.timeout:g} s)",
          flush=True)
    try:
        orchestrator, env_manager = await asyncio.gather(
            run_check("orchestrator-health", lambda: check_orchestrator(ctx)),
            run_check("env-manager-health", lambda: check_env_manager(ctx)))
        report(orchestrator)
        report(env_manager)
        later = ("task", "workflow", "events")
        if ctx.orchestrator_unreachable:
            for name in later:
                report(Outcome(name, False, "not run: the orchestrator at "
                                            f"{ctx.infra.orchestrator.address} is unreachable"))
            return outcomes
        # The task and the workflow run side by side: a broken stack costs one --timeout.
        task, workflow = await asyncio.gather(run_check("task", lambda: check_task(ctx)),
                                              run_check("workflow", lambda: check_workflow(ctx)))
        report(task)
        report(workflow)
        report(await run_check("events", lambda: check_events(ctx)))
    finally:
        await ctx.infra.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="End-to-end check of a live agent-infra stack through the Python client: "
                    "health of both daemons, a task, a workflow, events. Exit 0 when every "
                    "check passes, 1 otherwise.")
    parser.add_argument("--orchestrator", metavar="HOST:PORT",
                        help="orchestrator gRPC address (default: ORCHESTRATOR_GRPC_ADDR, "
                             "else 127.0.0.1:50052)")
    parser.add_argument("--env-manager", metavar="HOST:PORT",
                        help="env-manager gRPC address (default: ENV_MANAGER_GRPC_ADDR, "
                             "else 127.0.0.1:50100)")
    parser.add_argument("--class", dest="task_class", default="cpu_short",
                        help="workload class of the task and the workflow steps "
                             "(default: cpu_short)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed for the task, for the workflow run, and for "
                             "the event replay, each (default: 120)")
    parser.add_argument("--connect-timeout", type=float, default=5.0,
                        help="seconds to wait for a connection to each daemon (default: 5)")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.connect_timeout <= 0:
        parser.error("--timeout and --connect-timeout must be positive")
    try:
        outcomes = asyncio.run(run_checks(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    passed = sum(outcome.passed for outcome in outcomes)
    print(f"{passed} passed, {len(outcomes) - passed} failed", flush=True)
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
