"""Fuzzing, the long run: N generated cases against each daemon over gRPC and HTTP.

    .venv/bin/python bench/fuzz.py [--cases 50000] [--daemon orchestrator|env-manager|both]
                                   [--http-share 0.1]

The same strategies and judgement as tests/integration/test_fuzz_wire.py (tests/fuzz), with more
cases: each daemon gets `--cases` cases, a `--http-share` of them HTTP, the rest gRPC over every
RPC its descriptor lists. Prints cases/s, the status histogram, every distinct failure with its
smallest input, and whether the daemon stayed healthy with its seeded state unchanged.
Deterministic (hypothesis derandomize=True): the same --cases gives the same cases.
Exit status 0 when clean, 1 when any case failed (2 when a daemon did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzz.harness import (  # noqa: E402  (needs the repo root on sys.path)
    Report,
    env_manager_target,
    orchestrator_target,
    run_fuzz,
)

TARGETS = {"orchestrator": orchestrator_target, "env-manager": env_manager_target}


def fuzz_one(name: str, cases: int, http_share: float, workdir: Path) -> Report:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    context = TARGETS[name](workdir / name)
    target = loop.run_until_complete(context.__aenter__())
    http_cases = int(cases * http_share)
    began = time.monotonic()

    def progress(report: Report) -> None:
        elapsed = time.monotonic() - began
        print(f"  {name}: {report.cases} cases, {report.cases / elapsed:.0f}/s, "
              f"{len(report.failures)} distinct failures", flush=True)

    try:
        return run_fuzz(target, grpc_cases=cases - http_cases,
                        http_cases_count=http_cases, progress=progress)
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=50_000, help="cases per daemon")
    parser.add_argument("--daemon", choices=(*TARGETS, "both"), default="both")
    parser.add_argument("--http-share", type=float, default=0.1,
                        help="the share of each daemon's cases that are HTTP requests")
    args = parser.parse_args()
    names = list(TARGETS) if args.daemon == "both" else [args.daemon]
    reports = []
    with tempfile.TemporaryDirectory(prefix="ai-fuzz-") as tmp:
        for name in names:
            try:
                reports.append(fuzz_one(name, args.cases, args.http_share, Path(tmp)))
            except AssertionError as exc:  # a daemon did not start (tests.daemon_support)
                print(f"fuzz: {exc}", file=sys.stderr)
                return 2
    for report in reports:
        print()
        print(report.text())
    total = sum(r.cases for r in reports)
    seconds = sum(r.seconds for r in reports)
    print(f"\ntotal: {total} cases in {seconds:.1f} s ({total / seconds:.0f}/s); "
          f"{'CLEAN' if all(r.ok for r in reports) else 'FAILURES'}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
