"""SubmitTask throughput and latency, durable writes on, against a bare grpc.aio server.

    .venv/bin/python bench/submit_throughput.py [--callers 50] [--seconds 10] [--rounds 3]
        [--client-procs 1] [--channels 2] [--warmup 1.0] [--strict]

OURS is an orchestrator daemon subprocess on free loopback ports with its store in a temp dir
(SQLite WAL, synchronous=FULL, group commit: how it always runs) and a configuration under which
nothing is dispatched: every class has concurrency 0 and a backlog of 10,000,000, and
env_managers points at a free port nobody listens on. Everything else is the default (log level
info, the RPC middleware, metrics). ECHO, the floor, is a bare grpc.aio server subprocess
(bench/_baseline_server.py submit-echo) that serves the same orchestrator.v1 SubmitTask method and
answers success at once, storing nothing: the same wire, protobuf and client, minus everything
the orchestrator does.

The load is --callers concurrent callers, each sending SubmitTask back to back (unique ids, a
small payload, class cpu_short) through the generated async stub, spread over --channels
channels (each its own HTTP/2 connection) in --client-procs load-generator processes (0: in
this process). The callers run --warmup seconds, then --seconds are measured: requests completed
in the window per second, and the latency of those calls (p50/p99). Rounds alternate which side
goes first; the figures are medians over rounds. The server's CPU use over the window (all
threads, and its main thread, the asyncio loop, alone) and the load generators' are shown, so a
saturated client is visible, with the load average before and after (other work on the machine).
One load-generator process is the default: on a 2-core machine more of them only take CPU from
the server (see bench/README.md).

Durability is part of the claim: after the last round the orchestrator is killed with SIGKILL
and its SQLite file is opened; every acknowledged submit (warm-up included) must be there, under
its id, and nothing else.

Targets: OURS at least 0.5x ECHO's requests/s, OURS p99 under 50 ms. The exit status is 0 whatever
the figures, unless --strict (then 1 when a target is missed); 2 when something fails (a server
does not come up, a call fails, an acknowledged task is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc

SELF = Path(__file__).resolve()
REPO = SELF.parent.parent
sys.path.insert(0, str(REPO))

from agent_infra.wire import orchestrator_pb2 as pb  # noqa: E402  (needs the repo root on sys.path)
from agent_infra.wire import orchestrator_pb2_grpc  # noqa: E402

from bench._support import (  # noqa: E402
    START_TIMEOUT_S,
    BenchError,
    ServerProcess,
    arguments,
    load_average,
    orchestrator_config,
    run_and_report,
    start_baseline,
)
from tests.daemon_support import free_port, start_daemon  # noqa: E402

if TYPE_CHECKING:
    from agent_infra.wire.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub

OURS = "orchestrator"
ECHO = "grpc echo"
SIDES = (OURS, ECHO)
RATIO_TARGET = 0.5
P99_TARGET_MS = 50.0
CALL_TIMEOUT_S = 30.0
# Time a load-generator process gets to import grpc and connect before the warm-up begins.
SPAWN_LEAD_S = 2.5
TASK_CLASS = "cpu_short"
PAYLOAD = {"command": '["true"]', "note": "submit-throughput bench"}
# `class` is a Python keyword: the field goes in through ** (see tests/unit/test_wire_stubs.py).
CLASS_FIELD: dict[str, Any] = {"class": TASK_CLASS}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Every class the daemon knows by default, made unable to dispatch and never full.
CLASSES = dict.fromkeys(("cpu_short", "cpu_long", "gpu", "gpu_slurm"), 0)
MAX_BACKLOG = 10_000_000


# -- the load generator (in this process, or in a child started with --worker) -----------------


def task_id(prefix: str, caller: int, number: int) -> str:
    return f"{prefix}-c{caller}-{number}"


async def generate(addr: str, prefix: str, callers: int, channels: int, start_at: float,
                   seconds: float) -> dict[str, Any]:
    """Callers submitting back to back until start_at + seconds (unix time); what they saw.

    Calls completed inside [start_at, start_at + seconds) are the measured ones. `acked` is how
    many submits each caller had acknowledged in all (warm-up included): caller c's ids are
    task_id(prefix, c, 0 .. acked[c] - 1).
    """
    # A local subchannel pool per channel: its own TCP connection, not one shared by all.
    opened = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(max(1, channels))]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_S)
        # The stub is the aio one on an aio channel; grpc is untyped, so the overload cannot tell.
        stubs = [cast("OrchestratorServiceAsyncStub",
                      orchestrator_pb2_grpc.OrchestratorServiceStub(c)) for c in opened]
        offset = time.monotonic() - time.time()
        window_start = start_at + offset
        window_end = window_start + seconds
        if time.monotonic() > window_start:
            raise BenchError(f"load generator ready {time.monotonic() - window_start:.2f} s "
                             "after the window opened: raise SPAWN_LEAD_S or --warmup")
        latencies: list[float] = []
        acked = [0] * callers
        errors: list[str] = []

        async def caller(index: int) -> None:
            stub = stubs[index % len(stubs)]
            while not errors:
                began = time.monotonic()
                if began >= window_end:
                    return
                number = acked[index]
                request = pb.SubmitTaskRequest(
                    id=task_id(prefix, index, number), payload=PAYLOAD, **CLASS_FIELD)
                try:
                    response = await stub.SubmitTask(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{request.id}: {exc.code().name} {exc.details()}")
                    return
                ended = time.monotonic()
                if not response.success or response.task_id != request.id:
                    errors.append(f"{request.id}: success={response.success} "
                                  f"task_id={response.task_id!r} error={response.error!r}")
                    return
                acked[index] = number + 1
                if window_start <= ended < window_end:
                    latencies.append(ended - began)

        cpu: list[float] = []

        async def sample_cpu() -> None:
            await asyncio.sleep(max(0.0, window_start - time.monotonic()))
            cpu.append(time.process_time())
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            cpu.append(time.process_time())

        async with asyncio.TaskGroup() as group:
            group.create_task(sample_cpu())
            for index in range(callers):
                group.create_task(caller(index))
        return {"latencies": latencies, "acked": acked, "errors": errors,
                "cpu_s": cpu[1] - cpu[0] if len(cpu) == 2 else 0.0}
    finally:
        for channel in opened:
            await channel.close()


def worker_main(args: argparse.Namespace) -> int:
    """--worker: run generate() and print its result as one JSON line."""
    try:
        result = asyncio.run(generate(args.worker, args.prefix, args.callers, args.channels,
                                      args.start_at, args.seconds))
    except (BenchError, grpc.aio.AioRpcError, TimeoutError) as exc:
        result = {"latencies": [], "acked": [], "errors": [f"load generator: {exc!r}"],
                  "cpu_s": 0.0}
    print(json.dumps(result))
    return 0


# -- the two servers ------------------------------------------------------------------------


def cpu_seconds(server: ServerProcess) -> tuple[float, float]:
    """User + system CPU so far: of the whole process (all threads), and of its main thread
    (the asyncio loop, where a Python gRPC server does nearly all its work)."""
    pid = server.process.pid
    return _cpu(f"/proc/{pid}/stat"), _cpu(f"/proc/{pid}/task/{pid}/stat")


def _cpu(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


async def start_ours(workdir: Path) -> ServerProcess:
    config = workdir / "orchestrator.toml"
    config.write_text(orchestrator_config(workdir / "orchestrator-data",
                                          f"127.0.0.1:{free_port()}", CLASSES, MAX_BACKLOG))
    daemon = await start_daemon(OURS, workdir, args=["--config", str(config)],
                                timeout=START_TIMEOUT_S)
    daemon.notify.close()
    return ServerProcess.of(daemon)


# -- rounds ---------------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # fraction of one core over the window
    loop_cpu: float  # the server's main (event loop) thread alone
    client_cpu: float  # summed over the load generators, fraction of one core


@dataclass
class Acked:
    """Acknowledged submits per id prefix: prefix -> per-caller counts."""

    by_prefix: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(counts) for counts in self.by_prefix.values())

    def ids(self) -> set[str]:
        return {task_id(prefix, caller, number)
                for prefix, counts in self.by_prefix.items()
                for caller, count in enumerate(counts) for number in range(count)}


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def load_round(server: ServerProcess, prefix: str, args: argparse.Namespace,
                     acked: Acked) -> Sample:
    server.require_alive()
    procs = args.client_procs
    lead = args.warmup + (SPAWN_LEAD_S if procs else 0.5)
    start_at = time.time() + lead
    results: list[dict[str, Any]] = []
    cpu_before = cpu_after = (0.0, 0.0)

    async def sample_server() -> None:
        nonlocal cpu_before, cpu_after
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_before = cpu_seconds(server)
        await asyncio.sleep(args.seconds)
        cpu_after = cpu_seconds(server)

    sampler = asyncio.ensure_future(sample_server())
    try:
        if procs == 0:
            results.append(await generate(server.addr, prefix, args.callers, args.channels,
                                          start_at, args.seconds))
        else:
            results.extend(await asyncio.gather(*(
                run_worker(server.addr, f"{prefix}-p{number}", callers,
                           max(1, args.channels // procs), start_at, args.seconds)
                for number, callers in enumerate(split(args.callers, procs)))))
        await sampler
    finally:
        sampler.cancel()
    for number, result in enumerate(results):
        acked.by_prefix[f"{prefix}-p{number}" if procs else prefix] = list(result["acked"])
    errors = [error for result in results for error in result["errors"]]
    if errors:
        raise BenchError(f"{server.name}: {len(errors)} failed call(s), first: {errors[0]}")
    server.require_alive()
    latencies = sorted(x for result in results for x in result["latencies"])
    client_cpu = sum(float(result["cpu_s"]) for result in results)
    return Sample(
        rps=len(latencies) / args.seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        server_cpu=(cpu_after[0] - cpu_before[0]) / args.seconds,
        loop_cpu=(cpu_after[1] - cpu_before[1]) / args.seconds,
        client_cpu=client_cpu / args.seconds,
    )


async def run_worker(addr: str, prefix: str, callers: int, channels: int, start_at: float,
                     seconds: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SELF), "--worker", addr, "--prefix", prefix,
        "--callers", str(callers), "--channels", str(channels), "--start-at", repr(start_at),
        "--seconds", str(seconds), cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(seconds + SPAWN_LEAD_S + CALL_TIMEOUT_S + 60):
            output, errors = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"load generator {prefix} did not finish") from None
    if process.returncode != 0:
        raise BenchError(f"load generator {prefix} exited {process.returncode}:\n"
                         f"{errors.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return result


def verify_store(path: Path, acked: Acked) -> tuple[int, str]:
    """Every acknowledged id is a stored task and nothing else is; (rows, journal mode)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        stored = {str(row[0]) for row in conn.execute("SELECT id FROM tasks")}
        events = int(conn.execute("SELECT COUNT(*) FROM events WHERE event_type = "
                                  "'task_submitted'").fetchone()[0])
    finally:
        conn.close()
    expected = acked.ids()
    missing = expected - stored
    extra = stored - expected
    if missing:
        raise BenchError(f"{len(missing)} acknowledged submit(s) not in the store, e.g. "
                         f"{sorted(missing)[:3]}")
    if extra:
        # A call answered after its caller gave up would be stored but not acknowledged: none is
        # expected here (no call fails), so any extra row is a bookkeeping error in this bench.
        raise BenchError(f"{len(extra)} stored task(s) never acknowledged, "
                         f"e.g. {sorted(extra)[:3]}")
    if events != len(stored):
        raise BenchError(f"{len(stored)} tasks but {events} task_submitted events")
    return len(stored), mode


async def run(args: argparse.Namespace) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    args.load_before = load_average()
    label = f"st{uuid.uuid4().hex[:8]}"
    acked = Acked()
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        workdir = Path(tmp)
        servers: list[ServerProcess] = []
        try:
            servers.append(await start_baseline(workdir, "submit-echo", name=ECHO))
            servers.append(await start_ours(workdir))
            by_name = {server.name: server for server in servers}
            for number in range(1, args.rounds + 1):
                order = SIDES if number % 2 else tuple(reversed(SIDES))
                for side in order:
                    prefix = f"{label}-r{number}-{'o' if side == OURS else 'e'}"
                    sample = await load_round(by_name[side], prefix, args,
                                              acked if side == OURS else Acked())
                    samples[side].append(sample)
                    print(f"round {number}/{args.rounds} {side:<12} {sample.rps:8.0f} req/s  "
                          f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                          f"server CPU {sample.server_cpu:4.0%} (loop {sample.loop_cpu:4.0%})  "
                          f"client CPU {sample.client_cpu:4.0%}", file=sys.stderr, flush=True)
            ours = by_name[OURS]
            # The durability check: no graceful shutdown that could flush anything late.
            ours.process.kill()
            await ours.process.wait()
            rows, mode = await asyncio.to_thread(
                verify_store, workdir / "orchestrator-data" / "orchestrator.sqlite3", acked)
            print(f"store after SIGKILL: {rows} tasks, journal_mode={mode}; all {acked.total} "
                  "acknowledged submits present, nothing else", file=sys.stderr, flush=True)
            await by_name[ECHO].stop()
        finally:
            for server in servers:
                await server.kill()
    return samples


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> bool:
    def med(side: str, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in samples[side]))

    where = (f"{args.client_procs} load-generator process(es)" if args.client_procs
             else "the load generator in the bench process")
    print(f"\nSubmitTask, {args.callers} callers over {args.channels} channel(s), {where}; "
          f"{args.seconds:g} s windows, median of {args.rounds} rounds "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{args.load_before} before, {load_average()} after)")
    header = (f"{'':<13} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'srv CPU':>8} "
              f"{'srv loop':>8} {'cli CPU':>8} {'loop us/req':>11}   rounds req/s")
    print(header)
    for side in SIDES:
        rounds = ", ".join(f"{s.rps:.0f}" for s in samples[side])
        print(f"{side:<13} {med(side, 'rps'):>8.0f} {med(side, 'p50_ms'):>7.2f} "
              f"{med(side, 'p99_ms'):>7.2f} {med(side, 'server_cpu'):>8.0%} "
              f"{med(side, 'loop_cpu'):>8.0%} {med(side, 'client_cpu'):>8.0%} "
              f"{statistics.median(s.loop_cpu / s.rps * 1e6 for s in samples[side]):>11.0f}"
              f"   {rounds}")
    def per_request_us(side: str, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) / s.rps * 1e6 for s in samples[side]))

    ours_us, echo_us = per_request_us(OURS, "server_cpu"), per_request_us(ECHO, "server_cpu")
    print(f"server CPU per request (less sensitive to other load on the machine): orchestrator "
          f"{ours_us:.0f} us (loop {per_request_us(OURS, 'loop_cpu'):.0f}), echo {echo_us:.0f} us "
          f"(loop {per_request_us(ECHO, 'loop_cpu'):.0f}): {echo_us / ours_us:.2f}x")
    ratio = med(OURS, "rps") / med(ECHO, "rps")
    p99 = med(OURS, "p99_ms")
    ratio_ok = ratio >= RATIO_TARGET
    p99_ok = p99 < P99_TARGET_MS
    print(f"ratio orchestrator/echo: {ratio:.2f}x (target >= {RATIO_TARGET}x) "
          f"{'PASS' if ratio_ok else 'FAIL'}; orchestrator p99 {p99:.1f} ms "
          f"(target < {P99_TARGET_MS:g} ms) {'PASS' if p99_ok else 'FAIL'}")
    return ratio_ok and p99_ok


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--callers", type=int, default=50, help="concurrent callers")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each window")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="load-generator processes (0: run the callers in this process)")
    parser.add_argument("--channels", type=int, default=2,
                        help="gRPC channels (connections) in all, shared out over the processes")
    # A load-generator child (internal).
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.rounds < 1 or args.callers < 1 or args.seconds <= 0 or args.channels < 1:
        parser.error("--rounds, --callers and --channels must be at least 1, --seconds above 0")
    if args.client_procs < 0 or args.client_procs > args.callers:
        parser.error("--client-procs must be between 0 and --callers")
    return run_and_report("submit_throughput", run(args), lambda samples: report(samples, args),
                          strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
