"""Daemon start-up cost: time from exec to READY=1, and idle memory, against a bare gRPC baseline.

    .venv/bin/python bench/daemon_startup.py [--rounds 5] [--idle 1.0] [--strict]

Each round starts every subject as a fresh process on free loopback ports, waits for READY=1 on
its own NOTIFY_SOCKET (the systemd notify protocol), lets it idle, reads VmRSS from
/proc/<pid>/status, then stops it with SIGTERM and requires exit status 0. Subjects take turns
within a round so drift on the machine hits them alike. The figures are medians over the rounds.

BASELINE is the floor any Python gRPC daemon pays: a minimal grpc.aio server (import grpc, bind a
port, start, READY=1, wait for SIGTERM; bench/_baseline_server.py), run with the same interpreter,
in the same run.

Targets: READY within 1.0 s, idle RSS under 80 MB. The exit status is 0 whatever the figures,
unless --strict (then 1 when a target is missed); 2 when a subject fails to start or stop cleanly.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._support import (  # noqa: E402  (needs the repo root on sys.path)
    START_TIMEOUT_S,
    ServerProcess,
    arguments,
    run_and_report,
    start_baseline,
    status_mb,
)
from tests.daemon_support import start_daemon  # noqa: E402

DAEMONS = ("env-manager", "orchestrator")
BASELINE = "baseline"
READY_TARGET_S = 1.0
RSS_TARGET_MB = 80.0


@dataclass
class Sample:
    ready_s: float
    rss_mb: float
    stop_s: float


@dataclass
class Figures:
    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def ready_s(self) -> float:
        return statistics.median(s.ready_s for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return statistics.median(s.rss_mb for s in self.samples)

    @property
    def stop_s(self) -> float:
        return statistics.median(s.stop_s for s in self.samples)


async def measure(server: ServerProcess, idle: float) -> Sample:
    """Idle `idle` seconds after READY=1, read VmRSS, then stop with SIGTERM (exit 0 required)."""
    try:
        await asyncio.sleep(idle)
        server.require_alive()
        rss = status_mb("VmRSS", server.process.pid)
        stop = await server.stop()
    finally:
        await server.kill()
    return Sample(server.ready_s, rss, stop)


async def measure_daemon(name: str, workdir: Path, idle: float) -> Sample:
    # A fresh, private state directory per process (and never the user's own).
    state = str(workdir / f"{name}-state-{time.monotonic_ns()}")
    env = {"ORCHESTRATOR_DATA_DIR": state, "ENV_MANAGER_STATE_DIR": state}
    daemon = await start_daemon(name, workdir, env=env, timeout=START_TIMEOUT_S)
    try:
        return await measure(ServerProcess.of(daemon), idle)
    finally:
        daemon.notify.close()


async def run(rounds: int, idle: float) -> dict[str, Figures]:
    names = [BASELINE, *DAEMONS]
    figures = {name: Figures(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        workdir = Path(tmp)
        for number in range(1, rounds + 1):
            for name in names:
                if name == BASELINE:
                    sample = await measure(await start_baseline(workdir), idle)
                else:
                    sample = await measure_daemon(name, workdir, idle)
                figures[name].samples.append(sample)
                print(f"round {number}/{rounds} {name:<13} ready {sample.ready_s:.3f} s  "
                      f"rss {sample.rss_mb:.1f} MB  stop {sample.stop_s:.3f} s",
                      file=sys.stderr, flush=True)
    return figures


def report(figures: dict[str, Figures], rounds: int) -> bool:
    """Print the table; True when every daemon meets both targets."""
    base = figures[BASELINE]
    print(f"\ndaemon start-up, median of {rounds} rounds (python {sys.version.split()[0]})")
    header = (f"{'daemon':<13} {'ready s':>8} {'RSS MB':>7} {'stop s':>7} | "
              f"{'base ready':>10} {'base RSS':>8} | {'x ready':>7} {'x RSS':>6} | "
              f"{'target':<18} result")
    print(header)
    print("-" * len(header))
    print(f"{BASELINE:<13} {base.ready_s:>8.3f} {base.rss_mb:>7.1f} {base.stop_s:>7.3f} | "
          f"{'':>10} {'':>8} | {'':>7} {'':>6} | {'(floor)':<18}")
    all_pass = True
    for name in DAEMONS:
        f = figures[name]
        ok = f.ready_s < READY_TARGET_S and f.rss_mb < RSS_TARGET_MB
        all_pass &= ok
        target = f"<{READY_TARGET_S:.1f} s, <{RSS_TARGET_MB:.0f} MB"
        print(f"{name:<13} {f.ready_s:>8.3f} {f.rss_mb:>7.1f} {f.stop_s:>7.3f} | "
              f"{base.ready_s:>10.3f} {base.rss_mb:>8.1f} | "
              f"{f.ready_s / base.ready_s:>7.2f} {f.rss_mb / base.rss_mb:>6.2f} | "
              f"{target:<18} {'PASS' if ok else 'FAIL'}")
    return all_pass


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per subject")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds between READY=1 and reading VmRSS")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return run_and_report("daemon_startup", run(args.rounds, args.idle),
                          lambda figures: report(figures, args.rounds), strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
