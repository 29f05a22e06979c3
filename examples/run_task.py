"""Run one command as a task on the orchestrator, wait for it, and print its output.

    python examples/run_task.py                              # echo hello from a task container
    python examples/run_task.py -- sh -c 'uname -a; nproc'   # any command (after --)
    python examples/run_task.py --class cpu_long -- sleep 5

Addresses come from ORCHESTRATOR_GRPC_ADDR (default 127.0.0.1:50052). The exit status is the
task's own exit code when it ran, else 0 for a completed task and 1 for anything else (a failed
task, no orchestrator, a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent_infra import AgentInfra, InfraError, InfraUnavailable


async def main(command: list[str], task_class: str, timeout: float) -> int:
    # `async with` connects (within 5 s, else InfraUnavailable) and closes the channel at the end.
    async with AgentInfra.start() as infra:
        # run_task = submit_task + wait_for_task. A task id of None makes the client generate
        # one (task-<hex>); give your own to make a retried submit land on the same task.
        final = await infra.run_task(None, {"command": command}, task_class=task_class,
                                     timeout=timeout)

    # `final` is a TaskStatus dataclass. `result` is the wire's map of strings (exit_code,
    # stdout, stderr, ...); `decoded_result` would give exit_code back as an int.
    print(f"task {final.task_id}: {final.status} after {final.duration_ms:.0f} ms "
          f"(attempts: {final.attempts})")
    if final.result.get("stdout"):
        print("stdout:", final.result["stdout"], sep="\n", end="")
    if final.result.get("stderr"):
        print("stderr:", final.result["stderr"], sep="\n", end="", file=sys.stderr)
    if final.error:
        print(f"error: {final.error}", file=sys.stderr)
    exit_code = final.decoded_result.get("exit_code")
    if isinstance(exit_code, int):
        return exit_code
    return 0 if final.succeeded else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run a command as a task and print its output.")
    parser.add_argument("--class", dest="task_class", default="cpu_short",
                        help="workload class (default: cpu_short)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the task (default: 300)")
    parser.add_argument("command", nargs="*", default=["echo", "hello from a task container"],
                        help="the command and its arguments (after --)")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.command, args.task_class, args.timeout)))
    except InfraUnavailable as exc:
        sys.exit(f"no orchestrator: {exc}")  # sys.exit(text): text to stderr, exit status 1
    except (InfraError, TimeoutError) as exc:
        sys.exit(f"run_task failed: {exc}")
