"""Chaos in CI: a few minutes of tasks and workflow runs while either daemon is SIGKILLed every
5-10 s (and dockerd paused once), then nothing acknowledged lost and nothing run twice.

The long version is `bench/chaos.py` (10 minutes); the machinery is tests/fuzz/chaos.py.
AGENT_INFRA_CHAOS_SECONDS sets the chaos phase (default 150 s; the drain and the checks follow),
AGENT_INFRA_CHAOS_DOCKER_PAUSE the seconds the local dockerd is paused once (default 15; 0 when
other work shares the engine and must not be frozen).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.chaos import run_chaos

CHAOS_SECONDS = float(os.environ.get("AGENT_INFRA_CHAOS_SECONDS", "150"))
DOCKER_PAUSE = float(os.environ.get("AGENT_INFRA_CHAOS_DOCKER_PAUSE", "15"))


@pytest.mark.timeout(int(CHAOS_SECONDS) + 600)
async def test_kill_9_either_daemon_loses_nothing_and_runs_nothing_twice(
        tmp_path: Path, docker: object) -> None:
    result = await run_chaos(tmp_path, duration=CHAOS_SECONDS, docker_pause=DOCKER_PAUSE)
    print(result.text())
    verdict = result.verdict
    # a kill every 5-10 s, plus the restart: at least one per 20 s, whatever the machine
    assert sum(result.ledger.kills.values()) >= CHAOS_SECONDS // 20, result.text()
    assert verdict.acked_tasks > 0 and verdict.acked_runs > 0, result.text()
    assert verdict.lost_tasks == [], result.text()
    assert verdict.ran_twice == [], result.text()
    assert verdict.lost_runs == [], result.text()
    assert verdict.duplicated_runs == [], result.text()
