"""Fuzzing over the wire: every RPC of both daemons and every HTTP route (tests/fuzz).

Each test starts a real daemon, seeds some state, sends at least 2,000 generated gRPC cases and
a few hundred HTTP ones, then requires: only documented status codes (never UNKNOWN, INTERNAL
or HTTP 500), error messages of bounded length, the daemon alive and healthy, the seeded state
unchanged. The failure message lists every distinct failure with its smallest input.
Deterministic (derandomize=True); `bench/fuzz.py` runs the long version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import (
    FUZZED_SERVICES,
    assert_clean,
    env_manager_target,
    every_wire_service,
    orchestrator_routes,
    orchestrator_target,
    run_fuzz,
)

GRPC_CASES = 2000
HTTP_CASES = {"orchestrator": 800, "env-manager": 150}

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop of the test's own: hypothesis' examples are synchronous and drive it."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_every_wire_service_is_fuzzed() -> None:
    assert every_wire_service() <= FUZZED_SERVICES


def test_every_orchestrator_route_is_fuzzed() -> None:
    """The routes come from the app itself: the original's, /workflows and the console's."""
    routes = set(orchestrator_routes())
    assert {"/queue/submit", "/workflows", "/workflows/{id}/runs", "/console/tasks/{id}/cancel",
            "/console/stream", "/health", "/metrics"} <= routes


def test_fuzz_orchestrator(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    context = orchestrator_target(tmp_path)
    target = loop.run_until_complete(context.__aenter__())
    try:
        report = run_fuzz(target, grpc_cases=GRPC_CASES,
                          http_cases_count=HTTP_CASES["orchestrator"])
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
    print(report.text())
    assert report.cases >= GRPC_CASES
    assert_clean([report])


def test_fuzz_env_manager(loop: asyncio.AbstractEventLoop, tmp_path: Path,
                          docker: object) -> None:
    context = env_manager_target(tmp_path)
    target = loop.run_until_complete(context.__aenter__())
    try:
        report = run_fuzz(target, grpc_cases=GRPC_CASES,
                          http_cases_count=HTTP_CASES["env-manager"])
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
    print(report.text())
    assert report.cases >= GRPC_CASES
    assert_clean([report])
