"""Fan out: submit many tasks at once, then collect every result from one stream.

    python examples/fan_out.py                  # 10 tasks, each squaring its number
    python examples/fan_out.py --count 50 --class cpu_short

The orchestrator queues them all and runs as many at a time as the class's concurrency allows.
Addresses come from ORCHESTRATOR_GRPC_ADDR (default 127.0.0.1:50052). Exit status 0 when every
task completed with the right answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from agent_infra import AgentInfra, InfraError, TaskResult


async def main(count: int, task_class: str, timeout: float) -> int:
    batch = uuid.uuid4().hex[:8]  # our own ids: unique per run, easy to find in `agent-infra tasks`
    async with AgentInfra.start() as infra:
        began = time.monotonic()
        # 1. Submit everything concurrently. Each call returns as soon as the orchestrator has
        #    stored the task; nothing waits for a container here.
        submitted = await asyncio.gather(*(
            infra.submit_task(f"fan-{batch}-{n}",
                              {"command": ["sh", "-c", 'echo $((N * N))'], "env": {"N": str(n)}},
                              task_class=task_class)
            for n in range(count)))
        ids = [s["task_id"] for s in submitted]
        print(f"submitted {len(ids)} tasks in {time.monotonic() - began:.2f} s")

        # 2. Collect: ONE stream for all of them (not one wait per task). It sends each task's
        #    state, then every change, and ends by itself once all of them have ended.
        finished: dict[str, TaskResult] = {}
        async with asyncio.timeout(timeout):
            async for update in infra.stream_task_results(ids):
                if update.finished:
                    finished[update.task_id] = update
                    print(f"  {len(finished):3d}/{count} {update.task_id} {update.status}")

    # 3. Check and use the results. decoded_result turns the JSON-looking "49" into 49.
    wrong = 0
    for n, task_id in enumerate(ids):
        result = finished[task_id]
        answer = result.decoded_result.get("stdout")
        if result.status != "completed" or answer != n * n:
            wrong += 1
            print(f"{task_id}: {result.status} {answer!r} {result.error}", file=sys.stderr)
    print(f"{count - wrong}/{count} correct in {time.monotonic() - began:.2f} s; "
          f"sum of squares = {sum(n * n for n in range(count))}")
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Many tasks at once, results from one stream.")
    parser.add_argument("--count", type=int, default=10, help="tasks to run (default: 10)")
    parser.add_argument("--class", dest="task_class", default="cpu_short",
                        help="workload class (default: cpu_short)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds to wait for all of them (default: 600)")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.count, args.task_class, args.timeout)))
    except (InfraError, TimeoutError) as exc:
        sys.exit(f"fan_out failed: {exc}")
