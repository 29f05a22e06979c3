"""A diamond workflow: one step, two branches in parallel on its result, one step joining them.

    python examples/workflow_diamond.py
    python examples/workflow_diamond.py --text "the quick brown fox" --class cpu_short

          fetch              prints the run's input ({{ input.text }})
         /     \\
     count     shout         count its words / upper-case it ({{ steps.fetch.result.stdout }})
         \\     /
         report              both branches' results, and the run id

Each step is a task; its payload is a template the orchestrator fills in just before it submits
the step (services/orchestrator/templating.py has the syntax). Addresses come from
ORCHESTRATOR_GRPC_ADDR (default 127.0.0.1:50052). Exit status 0 when the run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from agent_infra import AgentInfra, InfraError


def sh(script: str, **env: str) -> dict[str, Any]:
    """A step payload: a shell script, with its inputs passed as environment variables (safer
    than pasting templates into the script: any text is fine in a variable)."""
    return {"command": ["sh", "-c", script], "env": env}


def diamond(task_class: str) -> dict[str, Any]:
    return {"steps": [
        {"id": "fetch", "class": task_class,
         "payload": sh('printf "%s" "$TEXT"', TEXT="{{ input.text }}")},
        # Both depend only on fetch, so they run at the same time.
        {"id": "count", "class": task_class, "depends_on": ["fetch"],
         "payload": sh('n=$(printf "%s" "$T" | wc -w); printf "%s" $n',
                       T="{{ steps.fetch.result.stdout }}")},
        {"id": "shout", "class": task_class, "depends_on": ["fetch"],
         "payload": sh("""printf "%s" "$T" | tr 'a-z' 'A-Z'""",
                       T="{{ steps.fetch.result.stdout }}")},
        # The join reads both parents (and may read any ancestor, fetch included).
        {"id": "report", "class": task_class, "depends_on": ["count", "shout"],
         "payload": sh('printf "%s words: %s (%s)" "$N" "$S" "$R"',
                       N="{{ steps.count.result.stdout }}",
                       S="{{ steps.shout.result.stdout }}", R="{{ run.id }}")},
    ]}


async def main(text: str, task_class: str, workflow_id: str, timeout: float) -> int:
    async with AgentInfra.start() as infra:
        # Creating is idempotent: the same spec keeps its version, a changed one is the next.
        created = await infra.create_workflow(workflow_id, diamond(task_class),
                                              name="diamond", description="examples/")
        print(f"workflow {created.workflow_id} version {created.version}")

        # The input map is what {{ input.NAME }} reads. Pass idempotency_key=... to make a
        # retried start return the same run instead of starting a second one.
        run = await infra.start_workflow_run(workflow_id, input={"text": text})
        print(f"run {run.run_id} started")

        # watch_workflow_run: the run's state now, then each change; it ends with the run.
        last = None
        async with asyncio.timeout(timeout):
            async for status in infra.watch_workflow_run(run.run_id):
                last = status
                print(f"  {status.status:<9} {status.steps_completed}/{status.total_steps} steps"
                      + (f"  (current: {status.current_step})" if status.current_step else ""))

    if last is None or last.status != "completed":
        print(f"run did not complete: {last.error if last else 'no status'}", file=sys.stderr)
        return 1
    # The output holds each leaf step's result as "STEP.KEY" (report.stdout, report.exit_code,
    # ...): strings as on the wire; `decoded_output` has JSON values (numbers...) decoded.
    print(f"report: {last.output['report.stdout']}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Create, run and watch a diamond workflow.")
    parser.add_argument("--text", default="hello from a diamond workflow",
                        help="the run's input text")
    parser.add_argument("--class", dest="task_class", default="cpu_short",
                        help="workload class of every step (default: cpu_short)")
    parser.add_argument("--workflow-id", default="example-diamond",
                        help="the id to create the workflow under (default: example-diamond)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds to wait for the run (default: 600)")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.text, args.task_class, args.workflow_id, args.timeout)))
    except (InfraError, TimeoutError) as exc:
        sys.exit(f"workflow_diamond failed: {exc}")
