"""StreamHealth: real probes at the asked interval; the current state first, then only changes.

A heartbeat re-sends every service's state now and then, so a client can tell a quiet stack from
a dead stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .docker import containers
from .docker.containers import ContainerState
from .probes import ProbeResult, probe
from .stack import StackManager

MIN_INTERVAL = 1.0
MAX_INTERVAL = 300.0
DEFAULT_INTERVAL = 5.0
HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class HealthChange:
    service: str
    healthy: bool
    message: str
    timestamp: int
    details: dict[str, str]


def clamp_interval(seconds: float) -> float:
    if seconds <= 0:
        return DEFAULT_INTERVAL
    return min(max(seconds, MIN_INTERVAL), MAX_INTERVAL)


async def watch_health(stack: StackManager, names: Sequence[str], interval: float,
                       heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[HealthChange]:
    registry = stack.registry
    wanted = registry.expand(names)
    period = clamp_interval(interval)
    last: dict[str, tuple[bool, str]] = {}
    last_beat = time.monotonic()
    while True:
        round_started = time.monotonic()
        existing = await containers.find_service_containers(stack.engine, stack.stack)
        results = await asyncio.gather(*(
            _probe_one(stack, name, existing.get(name)) for name in wanted))
        beat = round_started - last_beat >= heartbeat
        if beat:
            last_beat = round_started
        for name, result in zip(wanted, results, strict=True):
            stack.record_probe(name, result)
            # Latency and other details vary every round: a change is in health or its reason.
            key = (result.healthy, result.message)
            if key != last.get(name) or beat:
                last[name] = key
                details = dict(result.details)
                if beat:
                    details["heartbeat"] = "true"
                yield HealthChange(name, result.healthy, result.message, int(time.time()),
                                   details)
        await asyncio.sleep(max(0.0, period - (time.monotonic() - round_started)))


async def _probe_one(stack: StackManager, name: str,
                     state: ContainerState | None) -> ProbeResult:
    if state is None:
        return ProbeResult(False, "not running: no container", {"state": "absent"})
    return await probe(stack.engine, stack.registry.spec(name), state)
