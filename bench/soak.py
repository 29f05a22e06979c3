"""Soak: many clients, event and result streams, real dispatch, for minutes; nothing may drift.

    .venv/bin/python bench/soak.py [--duration 600] [--tasks 20000] [--clients 100]
                                   [--event-streams 20] [--result-streams 20]

A real env-manager and orchestrator (tests/fuzz/chaos.py's Cluster: cpu_short runs the local
busybox image, 8 at a time). `--clients` concurrent clients submit `--tasks` tasks (`true`),
paced evenly over `--duration`; `--event-streams` StreamEvents calls and `--result-streams`
StreamTaskResults calls (all tasks) read everything for the whole run. Both daemons' RSS and
open file descriptors are sampled every second from /proc.

Targets: zero errors, zero gaps in the event sequence numbers each event stream saw, RSS of each
daemon growing less than 10% from the first quarter of the run to the last, open fds flat
(last quarter's peak within 10% + 10 of the first quarter's). Prints p50/p99 submit latency and
a table; exit status 0 when every target is met, 1 otherwise, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from agent_infra.wire import orchestrator_pb2 as pb  # noqa: E402
from agent_infra.wire import orchestrator_pb2_grpc  # noqa: E402

from tests.daemon_support import DaemonProcess  # noqa: E402
from tests.fuzz.chaos import Cluster, cluster  # noqa: E402

CHANNELS = 10
TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Samples:
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    fds: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


@dataclass
class Figures:
    submitted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    events: int = 0
    gaps: int = 0
    results: int = 0
    finished: set[str] = field(default_factory=set)
    samples: Samples = field(default_factory=Samples)


def read_proc(daemon: DaemonProcess) -> tuple[int, int] | None:
    """(RSS bytes, open fds) of a running daemon, or None when it is gone."""
    pid = daemon.process.pid
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines()
               if line.startswith("VmRSS:"))
    return rss, fds


async def sampler(found: Cluster, figures: Figures, stop: asyncio.Event) -> None:
    began = time.monotonic()
    while not stop.is_set():
        for name, daemon in (("orchestrator", found.orchestrator),
                             ("env-manager", found.env_manager)):
            reading = read_proc(daemon) if daemon is not None else None
            if reading is not None:
                now = time.monotonic() - began
                figures.samples.rss.setdefault(name, []).append((now, reading[0]))
                figures.samples.fds.setdefault(name, []).append((now, reading[1]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def event_reader(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, figures: Figures,
                       stop: asyncio.Event) -> None:
    call = stub.StreamEvents(pb.StreamEventsRequest())
    last: int | None = None
    try:
        async for event in call:
            figures.events += 1
            seq = int(event.data["seq"]) if "seq" in event.data else None
            if seq is None:
                figures.errors["event without seq"] += 1
            elif last is not None and seq != last + 1:
                figures.gaps += 1
            last = seq if seq is not None else last
    except grpc.aio.AioRpcError as exc:
        if not stop.is_set():
            figures.errors[f"StreamEvents {exc.code().name}"] += 1


async def result_reader(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, figures: Figures,
                        stop: asyncio.Event) -> None:
    call = stub.StreamTaskResults(pb.StreamTaskResultsRequest())
    try:
        async for result in call:
            figures.results += 1
            if result.status in TERMINAL:
                figures.finished.add(result.task_id)
    except grpc.aio.AioRpcError as exc:
        if not stop.is_set():
            figures.errors[f"StreamTaskResults {exc.code().name}"] += 1


async def submitter(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, figures: Figures,
                    schedule: list[float], cursor: list[int], tag: str) -> None:
    while cursor[0] < len(schedule):
        index = cursor[0]
        cursor[0] += 1
        delay = schedule[index] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        request = pb.SubmitTaskRequest(id=f"soak-{tag}-{index}", payload={"command": "true"})
        setattr(request, "class", "cpu_short")
        began = time.monotonic()
        try:
            answer = await stub.SubmitTask(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            figures.errors[f"SubmitTask {exc.code().name}"] += 1
            continue
        figures.latencies.append(time.monotonic() - began)
        if answer.success:
            figures.submitted += 1
        else:
            figures.errors[f"SubmitTask {answer.error[:60]}"] += 1


async def soak(workdir: Path, args: argparse.Namespace) -> Figures:
    figures = Figures()
    async with cluster(workdir, concurrency=8) as found:
        channels = [grpc.aio.insecure_channel(found.orchestrator_addr) for _ in range(CHANNELS)]
        stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
        stop = asyncio.Event()
        streams = [asyncio.ensure_future(event_reader(stubs[n % CHANNELS], figures, stop))
                   for n in range(args.event_streams)]
        streams += [asyncio.ensure_future(result_reader(stubs[n % CHANNELS], figures, stop))
                    for n in range(args.result_streams)]
        watcher = asyncio.ensure_future(sampler(found, figures, stop))
        began = time.monotonic()
        schedule = [began + n * args.duration / args.tasks for n in range(args.tasks)]
        cursor = [0]
        tag = str(int(began))
        clients = [asyncio.ensure_future(submitter(stubs[n % CHANNELS], figures, schedule,
                                                   cursor, tag))
                   for n in range(args.clients)]
        await asyncio.gather(*clients)
        remaining = args.duration - (time.monotonic() - began)
        if remaining > 0:
            await asyncio.sleep(remaining)
        stop.set()
        for task in [*streams, watcher]:
            task.cancel()
        await asyncio.gather(*streams, watcher, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return figures


def quarter_stats(samples: list[tuple[float, int]]) -> tuple[float, float, int, int]:
    """(mean of the first quarter, mean of the last, peak of the first, peak of the last)."""
    end = samples[-1][0]
    first = [v for t, v in samples if t <= end / 4] or [samples[0][1]]
    last = [v for t, v in samples if t >= end * 3 / 4] or [samples[-1][1]]
    return statistics.mean(first), statistics.mean(last), max(first), max(last)


def report(figures: Figures, args: argparse.Namespace) -> bool:
    ok = True
    lat = sorted(figures.latencies) or [0.0]
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    rows = [("tasks submitted", f"{figures.submitted} / {args.tasks}", ""),
            ("tasks finished (seen on result streams)", str(len(figures.finished)), ""),
            ("submit latency p50 / p99", f"{p50:.1f} ms / {p99:.1f} ms", ""),
            ("errors", str(sum(figures.errors.values())), "goal 0"),
            ("events received (all streams)", str(figures.events), ""),
            ("gaps in event seq", str(figures.gaps), "goal 0"),
            ("task results received (all streams)", str(figures.results), "")]
    ok &= not figures.errors and figures.gaps == 0 and figures.submitted == args.tasks
    for name in ("orchestrator", "env-manager"):
        rss = figures.samples.rss.get(name)
        fds = figures.samples.fds.get(name)
        if not rss or not fds:
            rows.append((f"{name} /proc samples", "none", "FAIL"))
            ok = False
            continue
        first, last, _, _ = quarter_stats(rss)
        growth = (last - first) / first * 100
        _, _, fd_first, fd_last = quarter_stats(fds)
        fd_ok = fd_last <= fd_first * 1.1 + 10
        rows.append((f"{name} RSS first/last quarter",
                     f"{first / 2**20:.0f} MB / {last / 2**20:.0f} MB ({growth:+.1f}%)",
                     "PASS" if growth < 10 else "FAIL (goal < 10%)"))
        rows.append((f"{name} open fds peak first/last quarter", f"{fd_first} / {fd_last}",
                     "PASS" if fd_ok else "FAIL (goal flat)"))
        ok &= growth < 10 and fd_ok
    width = max(len(r[0]) for r in rows)
    print(f"soak: {args.duration:.0f} s, {args.clients} clients, {args.event_streams} event "
          f"streams, {args.result_streams} result streams")
    for label, value, verdict in rows:
        print(f"  {label:<{width}}  {value:<28} {verdict}")
    for what, count in figures.errors.most_common(10):
        print(f"  error: {count}x {what}")
    print("PASS" if ok else "FAIL")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--event-streams", type=int, default=20)
    parser.add_argument("--result-streams", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ai-soak-") as tmp:
        try:
            figures = asyncio.run(soak(Path(tmp), args))
        except AssertionError as exc:
            print(f"soak: the run failed: {exc}", file=sys.stderr)
            return 2
    return 0 if report(figures, args) else 1


if __name__ == "__main__":
    sys.exit(main())
