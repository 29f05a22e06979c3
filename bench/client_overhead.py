"""Client overhead: `AgentInfra.run_task` round trips against the raw generated stub, same daemons.

    .venv/bin/python bench/client_overhead.py [--tasks 200] [--rounds 5] [--concurrency 8]
        [--backend instant|docker] [--strict] [--keep]

One orchestrator daemon subprocess (own --data-dir; class cpu_short with concurrency
max(8, --concurrency)) dispatches to one env-manager endpoint:
  instant (default)  a stub env-manager in a subprocess of its own (bench/_baseline_server.py
                     env-manager), whose ExecuteTask answers success (exit code 0) at once:
                     no container, so a round trip is the orchestrator's own work (two durable
                     writes, dispatch, the result stream) and the client's cost is not hidden
                     behind container start-up.
  docker             a real env-manager daemon (own stack name) running each task as a
                     `local/busybox:latest` container (network none) doing `true`.
The sides, run against the same daemons in the same rounds:
  client     AgentInfra.run_task(task_id, {"command": ["true"]}): the public client, on one
             connection made before the rounds: SubmitTask, then wait_for_task (StreamTaskResults
             for the id until it is terminal, then GetTaskStatus for the full final state), with
             its payload encoding, dataclass conversion, deadlines and retry config.
  raw stub   the generated OrchestratorServiceStub on a plain grpc.aio channel: SubmitTask with
             the same payload bytes, then StreamTaskResults for the id until the status is
             terminal (then the call is cancelled).
  raw+status reference, not judged: the raw stub making the client's three RPCs (the above,
             then GetTaskStatus), to tell the cost of the extra call from the library's own.
Each call must end `completed`; task ids are unique per run, side, phase and round. Two phases:
sequential (one call at a time) and concurrent (--concurrency workers; 0 or 1 skips it). Each
round runs every side, the order reversed every other round; 10 calls per side warm up first.
Figures are medians over rounds of the batch wall time and of this process's CPU time per call
(the caller's own cost: Python code and gRPC's threads), and the per-call latency p50/p90 over
all calls.
Target: client/raw ratio at most 1.10 in every phase. Exit 0 whatever the figures unless
--strict (then 1 when the target is missed); 2 when something fails.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_infra.client import AgentInfra  # noqa: E402
from agent_infra.wire import orchestrator_pb2 as pb  # noqa: E402
from agent_infra.wire import orchestrator_pb2_grpc  # noqa: E402

from bench._support import (  # noqa: E402  (needs the repo root on sys.path)
    STACK_LABEL,
    Batch,
    BenchError,
    arguments,
    baseline,
    clean_up,
    env_manager,
    env_manager_config,
    median,
    orchestrator_config,
    require_gone,
    require_image,
    run_and_report,
    run_batch,
    run_id,
    verdict,
)
from tests.daemon_support import running_daemon  # noqa: E402

if TYPE_CHECKING:
    from agent_infra.wire.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub

TARGET = 1.10
TASK_CLASS = "cpu_short"
COMMAND = ["true"]
# What the client sends for {"command": ["true"]}: non-string values go as JSON.
RAW_PAYLOAD = {"command": '["true"]'}
# `class` is a Python keyword: the field goes in through ** (see tests/unit/test_wire_stubs.py).
CLASS_FIELD: dict[str, Any] = {"class": TASK_CLASS}
TERMINAL = frozenset({"completed", "failed", "cancelled"})
CALL_TIMEOUT_S = 120.0
WARMUP_CALLS = 10
CLIENT = "client"
RAW = "raw stub"
# Reference, not judged: the raw stub making the same three RPCs as the client.
RAW_STATUS = "raw+status"
SIDES = (CLIENT, RAW, RAW_STATUS)


# --- the sides ------------------------------------------------------------------------------------


@dataclass
class Sides:
    infra: AgentInfra
    stub: OrchestratorServiceAsyncStub

    async def client_call(self, task_id: str) -> None:
        final = await self.infra.run_task(task_id, {"command": COMMAND}, task_class=TASK_CLASS,
                                          timeout=CALL_TIMEOUT_S)
        if final.status != "completed":
            raise BenchError(f"client: task {task_id} ended {final.status}: {final.error}")

    async def raw_call(self, task_id: str, *, get_status: bool = False) -> None:
        submitted = await self.stub.SubmitTask(
            pb.SubmitTaskRequest(id=task_id, payload=RAW_PAYLOAD, **CLASS_FIELD),
            timeout=CALL_TIMEOUT_S)
        if not submitted.success:
            raise BenchError(f"raw stub: SubmitTask {task_id}: {submitted.error}")
        call = self.stub.StreamTaskResults(
            pb.StreamTaskResultsRequest(task_ids=[task_id], include_completed=True),
            timeout=CALL_TIMEOUT_S)
        status = ""
        try:
            async for item in call:
                if item.status in TERMINAL:
                    status = item.status
                    break
        finally:
            call.cancel()
        if status != "completed":
            raise BenchError(f"raw stub: task {task_id} ended {status or 'without a result'}")
        if get_status:
            final = await self.stub.GetTaskStatus(pb.GetTaskStatusRequest(task_id=task_id),
                                                  timeout=CALL_TIMEOUT_S)
            if final.status != "completed":
                raise BenchError(f"raw stub: GetTaskStatus {task_id}: {final.status}")

    async def batch(self, side: str, label: str, count: int, concurrency: int) -> Batch:
        calls: dict[str, tuple[str, Callable[[str], Awaitable[None]]]] = {
            CLIENT: ("c", self.client_call),
            RAW: ("r", self.raw_call),
            RAW_STATUS: ("s", lambda task_id: self.raw_call(task_id, get_status=True)),
        }
        tag, call = calls[side]
        return await run_batch(count, concurrency, lambda i: call(f"{label}-{tag}{i}"))


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    concurrency: int
    results: dict[str, list[Batch]] = field(default_factory=lambda: {s: [] for s in SIDES})


@asynccontextmanager
async def backend(kind: str, workdir: Path, label: str,
                  concurrency: int) -> AsyncIterator[str]:
    """The env-manager endpoint the orchestrator dispatches to."""
    if kind == "instant":
        async with baseline(workdir, "env-manager", name="stub env-manager") as stub:
            yield stub.addr
        return
    await require_image()
    config = workdir / "env-manager.toml"
    config.write_text(env_manager_config(label, concurrency))
    try:
        async with env_manager(workdir, config) as em:
            yield em.daemon.grpc_addr
        await require_gone(STACK_LABEL, label, "after the rounds")
    finally:
        await clean_up("client_overhead", (STACK_LABEL, label))


async def run(args: argparse.Namespace) -> list[Phase]:
    label = run_id()
    workdir = Path(tempfile.mkdtemp(prefix="ai-bench-client-"))
    concurrency = max(8, args.concurrency)
    phases = [Phase("sequential", 1)]
    if args.concurrency > 1:
        phases.append(Phase("concurrent", args.concurrency))
    print(f"client_overhead: run {label}, backend {args.backend}, files in {workdir}",
          file=sys.stderr, flush=True)
    try:
        async with backend(args.backend, workdir, label, concurrency) as em_address:
            config = workdir / "orchestrator.toml"
            config.write_text(orchestrator_config(workdir / "orchestrator-data", em_address,
                                                  {TASK_CLASS: concurrency}, 1_000_000))
            async with running_daemon("orchestrator", workdir,
                                      args=["--config", str(config)]) as orchestrator:
                infra = await AgentInfra(orchestrator_address=orchestrator.grpc_addr).connect()
                try:
                    # The stub is the aio one on an aio channel; grpc is untyped, so the
                    # overload cannot tell.
                    stub = cast("OrchestratorServiceAsyncStub",
                                orchestrator_pb2_grpc.OrchestratorServiceStub(
                                    orchestrator.channel()))
                    sides = Sides(infra, stub)
                    for side in SIDES:
                        await sides.batch(side, f"{label}-warmup", WARMUP_CALLS, 1)
                    for phase in phases:
                        for number in range(1, args.rounds + 1):
                            order = SIDES if number % 2 else tuple(reversed(SIDES))
                            for side in order:
                                batch = await sides.batch(
                                    side, f"{label}-{phase.name}-r{number}", args.tasks,
                                    phase.concurrency)
                                phase.results[side].append(batch)
                                print(f"{phase.name} round {number}/{args.rounds} {side:<10}"
                                      f"{batch.seconds:7.2f} s (slowest call "
                                      f"{max(batch.latencies) * 1000:.0f} ms)",
                                      file=sys.stderr, flush=True)
                finally:
                    await infra.close()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return phases


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] \
        if len(values) > 1 else values[0]


def report(phases: list[Phase], args: argparse.Namespace) -> bool:
    all_pass = True
    for phase in phases:
        totals = {side: median([b.seconds for b in phase.results[side]]) for side in SIDES}
        p50s = {side: percentile([lat for b in phase.results[side] for lat in b.latencies], 50)
                for side in SIDES}
        ratio = totals[CLIENT] / totals[RAW]
        all_pass = all_pass and ratio <= TARGET
        print(f"\nclient overhead, {phase.name} (concurrency {phase.concurrency}): {args.tasks} "
              f"run_task round trips per side and round, backend {args.backend}, median of "
              f"{args.rounds} rounds")
        print(f"{'':<11}{'total s':>8} {'calls/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
              f"{'cpu ms/call':>12}   rounds")
        for side in SIDES:
            batches = phase.results[side]
            latencies = [lat for b in batches for lat in b.latencies]
            cpu = median([b.cpu_seconds for b in batches]) / args.tasks * 1000
            print(f"{side:<11}{totals[side]:>8.2f} {args.tasks / totals[side]:>8.1f} "
                  f"{p50s[side] * 1000:>8.2f} {percentile(latencies, 90) * 1000:>8.2f} "
                  f"{cpu:>12.2f}   {', '.join(f'{b.seconds:.2f}' for b in batches)}")
        print(f"ratio client/raw stub: {ratio:.3f}x (target <= {TARGET}x) "
              f"{verdict(ratio, TARGET)}; p50 {(p50s[CLIENT] - p50s[RAW]) * 1000:+.2f} ms per call")
        print(f"  of which the client's third RPC (GetTaskStatus): raw+status/raw stub "
              f"{totals[RAW_STATUS] / totals[RAW]:.3f}x; client/raw+status "
              f"{totals[CLIENT] / totals[RAW_STATUS]:.3f}x")
    return all_pass


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--tasks", type=int, default=200, help="calls per side and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per phase (at least 3)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="workers in the concurrent phase (0 or 1: sequential only)")
    parser.add_argument("--backend", choices=("instant", "docker"), default="instant",
                        help="instant: a stub env-manager answering at once (default); "
                             "docker: a real env-manager running busybox `true` containers")
    parser.add_argument("--keep", action="store_true", help="keep the configs and daemon logs")
    args = parser.parse_args(argv)
    if args.rounds < 3 or args.tasks < 1 or args.concurrency < 0:
        parser.error("--rounds must be at least 3, --tasks at least 1, --concurrency at least 0")
    return run_and_report("client_overhead", run(args), lambda phases: report(phases, args),
                          strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
