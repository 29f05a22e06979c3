"""Daemon start-up cost: time from exec to READY=1, and idle memory, against a bare gRPC baseline.

    .venv/bin/python bench/daemon_startup.py [--rounds 5] [--idle 1.0] [--strict]

Each round starts every subject as a fresh process on free loopback ports, waits for READY=1 on
its own NOTIFY_SOCKET (the systemd notify protocol), lets it idle, reads VmRSS from
/proc/<pid>/status, then stops it with SIGTERM and requires exit status 0. Subjects take turns
within a round so drift on the machine hits them alike. The figures are medians over the rounds.

BASELINE is the floor any Python gRPC daemon pays: a minimal grpc.aio server (import grpc, bind a
port, start, READY=1, wait for SIGTERM), run with the same interpreter, in the same run.

Targets: READY within 1.0 s, idle RSS under 80 MB. The exit status is 0 whatever the figures,
unless --strict (then 1 when a target is missed); 2 when a subject fails to start or stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon_support import (  # noqa: E402  (needs the repo root on sys.path)
    NotifyListener,
    free_port,
    start_daemon,
)

DAEMONS = ("env-manager", "orchestrator")
BASELINE = "baseline"
READY_TARGET_S = 1.0
RSS_TARGET_MB = 80.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0

# The floor: what a gRPC daemon does at the very least before it can say READY=1.
BASELINE_SCRIPT = '''\
import asyncio, os, signal, socket, sys

import grpc


async def main() -> None:
    server = grpc.aio.server()
    if server.add_insecure_port(sys.argv[1]) == 0:
        raise SystemExit(f"cannot bind {sys.argv[1]}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    await stop.wait()
    await server.stop(None)


asyncio.run(main())
'''


class BenchError(Exception):
    """A subject did not start or stop the way a daemon must; the figures would mean nothing."""


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


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            kilobytes = int(line.split()[1])
            return kilobytes / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


async def stop_process(name: str, process: asyncio.subprocess.Process, log: Path) -> float:
    """SIGTERM; seconds until it exits. Anything but exit 0 is an error."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            code = await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"{name} ignored SIGTERM for {STOP_TIMEOUT_S}s") from None
    if code != 0:
        output = await asyncio.to_thread(read_log, log)
        raise BenchError(f"{name} exited {code} after SIGTERM (expected 0):\n{output}")
    return time.monotonic() - began


async def measure_daemon(name: str, workdir: Path, idle: float) -> Sample:
    # A fresh, private state directory per process (and never the user's own).
    state = str(workdir / f"{name}-state-{time.monotonic_ns()}")
    env = {"ORCHESTRATOR_DATA_DIR": state, "ENV_MANAGER_STATE_DIR": state}
    daemon = await start_daemon(name, workdir, env=env, timeout=START_TIMEOUT_S)
    try:
        await asyncio.sleep(idle)
        if daemon.process.returncode is not None:
            raise BenchError(f"{name} exited {daemon.process.returncode} while idle:\n"
                             f"{daemon.log_text()}")
        rss = vm_rss_mb(daemon.process.pid)
        stop = await stop_process(name, daemon.process, daemon.log_path)
    finally:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()
        daemon.notify.close()
    return Sample(daemon.ready_seconds, rss, stop)


async def measure_baseline(script: Path, workdir: Path, idle: float) -> Sample:
    """Like tests.daemon_support.start_daemon, for the baseline script: exec -> READY=1."""
    notify = NotifyListener()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update({"NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1"})
    log = workdir / f"{BASELINE}.log"
    try:
        began = time.monotonic()
        with log.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(script), f"127.0.0.1:{free_port()}", cwd=REPO, env=env,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        try:
            ready = asyncio.ensure_future(notify.wait_for("READY", timeout=START_TIMEOUT_S))
            exited = asyncio.ensure_future(process.wait())
            done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                output = await asyncio.to_thread(read_log, log)
                raise BenchError(f"{BASELINE} exited {process.returncode} before READY=1:\n"
                                 f"{output}")
            exited.cancel()
            if ready.exception() is not None:
                raise BenchError(f"{BASELINE} sent no READY=1 within {START_TIMEOUT_S}s")
            ready_s = time.monotonic() - began
            await asyncio.sleep(idle)
            rss = vm_rss_mb(process.pid)
            stop = await stop_process(BASELINE, process, log)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        notify.close()
    return Sample(ready_s, rss, stop)


async def run(rounds: int, idle: float) -> dict[str, Figures]:
    names = [BASELINE, *DAEMONS]
    figures = {name: Figures(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        workdir = Path(tmp)
        script = workdir / "grpc_baseline.py"
        script.write_text(BASELINE_SCRIPT)
        for number in range(1, rounds + 1):
            for name in names:
                if name == BASELINE:
                    sample = await measure_baseline(script, workdir, idle)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per subject")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds between READY=1 and reading VmRSS")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        figures = asyncio.run(run(args.rounds, args.idle))
    except (BenchError, AssertionError) as exc:
        print(f"daemon_startup: {exc}", file=sys.stderr)
        return 2
    all_pass = report(figures, args.rounds)
    return 1 if args.strict and not all_pass else 0


if __name__ == "__main__":
    sys.exit(main())
