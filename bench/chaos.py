"""Chaos: tasks and workflow runs under load while either daemon is SIGKILLed at random.

    .venv/bin/python bench/chaos.py [--duration 600] [--workers 6] [--docker-pause 15]
                                    [--interval 5 10] [--seed 1]

A real env-manager and orchestrator (fixed ports, so clients reconnect), `--workers` clients
that each submit a task and follow it to its end again and again, and one that starts workflow
runs (3 steps) with idempotency keys. Every 5-10 s one daemon, chosen at random, is killed with
SIGKILL and started again. Once, 20 s in, the local dockerd is paused (SIGSTOP) for
`--docker-pause` seconds, then resumed (0 disables; only the local engine on
/var/run/docker.sock is ever paused, and a detached `kill -CONT` guards against this process
dying meanwhile). Each task's command appends `start ID` to a file in a host directory the
workload class mounts read-write, so double execution is counted, not guessed.

Prints: acknowledged tasks lost (goal 0), tasks whose command ran twice (goal 0), workflow runs
lost or duplicated (goal 0). Exit status 0 when all are 0, 1 otherwise, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzz.chaos import run_chaos  # noqa: E402  (needs the repo root on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of chaos")
    parser.add_argument("--workers", type=int, default=6, help="concurrent task clients")
    parser.add_argument("--docker-pause", type=float, default=15.0,
                        help="seconds dockerd is paused once (0: never)")
    parser.add_argument("--interval", type=float, nargs=2, default=(5.0, 10.0),
                        metavar=("MIN", "MAX"), help="seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ai-chaos-") as tmp:
        try:
            result = asyncio.run(run_chaos(
                Path(tmp), duration=args.duration, workers=args.workers,
                interval=tuple(args.interval), docker_pause=args.docker_pause, seed=args.seed,
                progress=lambda line: print(f"  {line}", flush=True)))
        except (AssertionError, TimeoutError) as exc:
            print(f"chaos: the run failed: {exc!r}", file=sys.stderr)
            return 2
    print(result.text())
    v = result.verdict
    clean = not (v.lost_tasks or v.ran_twice or v.lost_runs or v.duplicated_runs)
    print("PASS" if clean else "FAIL")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
