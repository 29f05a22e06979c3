"""Task execution: trivial ExecuteTask calls against a `docker run --rm` loop, same concurrency.

    .venv/bin/python bench/task_exec.py [--tasks 50] [--concurrency 4] [--rounds 3] [--strict]

One env-manager daemon subprocess (own stack name, own --state-dir) serves a workload class
cpu_short (image local/busybox:latest, network_mode "none", concurrency = max(4, --concurrency),
no CPU/memory limits). Each round, in alternating order:
  env-manager  --tasks ExecuteTask calls (command ["true"], task ids unique per run and round, so
               none is answered from the result store) from --concurrency workers through the
               generated async stub; every response must be success with exit_code 0, not cached.
  docker run   the same number of `docker run --rm --network none local/busybox:latest true`
               from --concurrency workers (asyncio subprocesses); every exit status must be 0.
Both are timed from the first call to the last answer. Afterwards no container of the stack or of
this run may be left. Target: env-manager at most 1.15x the loop's time. Exit 0 whatever the
figures unless --strict (then 1 when the target is missed); 2 when something fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_infra.wire import env_manager_pb2 as pb  # noqa: E402

from bench._support import (  # noqa: E402  (needs the repo root on sys.path)
    BENCH_LABEL,
    IMAGE,
    STACK_LABEL,
    Batch,
    BenchError,
    EnvManager,
    arguments,
    clean_up,
    env_manager,
    env_manager_config,
    median,
    require_gone,
    require_image,
    run_and_report,
    run_batch,
    run_command,
    run_id,
    verdict,
)

TARGET = 1.15
WORKLOAD_CLASS = "cpu_short"
CALL_TIMEOUT_S = 120.0
ENV_MANAGER = "env-manager"
DOCKER_RUN = "docker run"
SIDES = (ENV_MANAGER, DOCKER_RUN)


@dataclass
class Bench:
    em: EnvManager
    label: str
    tasks: int
    concurrency: int
    results: dict[str, list[Batch]] = field(default_factory=dict)

    async def env_manager_round(self, number: int) -> Batch:
        async def one(index: int) -> None:
            task_id = f"{self.label}-r{number}-t{index}"
            response = await self.em.stub.ExecuteTask(pb.ExecuteTaskRequest(
                task_id=task_id, workload_class=WORKLOAD_CLASS,
                payload={"command": json.dumps(["true"])}), timeout=CALL_TIMEOUT_S)
            result = dict(response.result)
            if (not response.success or result.get("exit_code") != "0"
                    or result.get("cached") == "true"):
                raise BenchError(f"ExecuteTask {task_id}: success={response.success} "
                                 f"error={response.error!r} result={result}")

        return await run_batch(self.tasks, self.concurrency, one)

    async def docker_run_round(self) -> Batch:
        async def one(index: int) -> None:
            await run_command("docker", "run", "--rm", "--network", "none", "--label",
                              f"{BENCH_LABEL}={self.label}", IMAGE, "true",
                              timeout=CALL_TIMEOUT_S)

        return await run_batch(self.tasks, self.concurrency, one)


def report(bench: Bench, rounds: int) -> bool:
    ours, theirs = bench.results[ENV_MANAGER], bench.results[DOCKER_RUN]
    ours_s, their_s = median([b.seconds for b in ours]), median([b.seconds for b in theirs])
    ratio = ours_s / their_s
    print(f"\ntask execution: {bench.tasks} trivial tasks (`true`, network none) at concurrency "
          f"{bench.concurrency}, median of {rounds} rounds")
    print(f"{'':<14}{'total s':>8} {'tasks/s':>8} {'call p50 ms':>12}   rounds")
    for side, batches, total in ((ENV_MANAGER, ours, ours_s), (DOCKER_RUN, theirs, their_s)):
        p50 = median([lat for b in batches for lat in b.latencies]) * 1000
        print(f"{side:<14}{total:>8.2f} {bench.tasks / total:>8.1f} {p50:>12.0f}   "
              f"{', '.join(f'{b.seconds:.2f}' for b in batches)}")
    print(f"ratio env-manager/docker run: {ratio:.2f}x (target <= {TARGET}x) "
          f"{verdict(ratio, TARGET)}")
    return ratio <= TARGET


async def run(args: argparse.Namespace) -> Bench:
    await require_image()
    label = run_id()
    stack = label
    workdir = Path(tempfile.mkdtemp(prefix="ai-bench-task-"))
    config = workdir / "env-manager.toml"
    config.write_text(env_manager_config(stack, max(4, args.concurrency), WORKLOAD_CLASS))
    print(f"task_exec: run {label}, files in {workdir}", file=sys.stderr, flush=True)
    try:
        async with env_manager(workdir, config) as em:
            bench = Bench(em, label, args.tasks, args.concurrency,
                          results={side: [] for side in SIDES})
            for number in range(1, args.rounds + 1):
                order = SIDES if number % 2 else tuple(reversed(SIDES))
                for side in order:
                    if side == ENV_MANAGER:
                        batch = await bench.env_manager_round(number)
                    else:
                        batch = await bench.docker_run_round()
                    bench.results[side].append(batch)
                    print(f"round {number}/{args.rounds} {side:<12} {batch.seconds:6.2f} s",
                          file=sys.stderr, flush=True)
            await require_gone(STACK_LABEL, stack, "after the env-manager rounds")
            await require_gone(BENCH_LABEL, label, "after the docker run rounds")
    finally:
        await clean_up("task_exec", (STACK_LABEL, stack), (BENCH_LABEL, label))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--tasks", type=int, default=50, help="tasks per round and side")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (at least 3)")
    parser.add_argument("--keep", action="store_true", help="keep the config and daemon log")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tasks < 1 or args.concurrency < 1:
        parser.error("--rounds, --tasks and --concurrency must be at least 1")
    return run_and_report("task_exec", run(args), lambda bench: report(bench, args.rounds),
                          strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
