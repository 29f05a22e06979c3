"""Health probes: one check of one service, as its spec's healthcheck says.

tcp and http go to the published port on 127.0.0.1 only (never to a container address); exec
runs inside the container; docker reads the image's own HEALTHCHECK status. An unhealthy
service is a result, not an exception: only an unreachable Docker engine raises (Unavailable).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from agent_infra.runtime.errors import DeadlineExceeded, FailedPrecondition, NotFound

from .docker.containers import ContainerState, exec_in, inspect_state
from .docker.engine import DockerEngine
from .registry import HealthCheck, ServiceSpec

PROBE_HOST = "127.0.0.1"
# Docker's userland proxy accepts every connection to a published port, even with nothing
# listening in the container, and then closes it at once (well under 1 ms here, idle). A
# connection still open after this long reached a real listener; the margin is for a busy host.
TCP_SETTLE_S = 0.1


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    message: str
    details: dict[str, str] = field(default_factory=dict)


async def probe(engine: DockerEngine, spec: ServiceSpec, state: ContainerState) -> ProbeResult:
    check = spec.healthcheck
    kind = check.type if check else "none"
    if not state.running:
        exit_part = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
        details = {"type": kind, "target": state.name, "latency_ms": "0"}
        if state.exit_code is not None:
            details["exit_code"] = str(state.exit_code)
        return ProbeResult(False, f"container is {state.state or 'missing'}{exit_part}", details)
    if check is None:
        return ProbeResult(True, "running (no health check)",
                           {"type": kind, "target": state.name, "latency_ms": "0"})
    started = time.monotonic()
    if check.type in ("tcp", "http"):
        healthy, message, target, extra = await _published(spec, check)
    elif check.type == "exec":
        healthy, message, target, extra = await _exec(engine, state, check)
    else:
        healthy, message, target, extra = await _docker(engine, state)
    latency_ms = round((time.monotonic() - started) * 1000)
    details = {"type": kind, "target": target, "latency_ms": str(latency_ms), **extra}
    return ProbeResult(healthy, message, details)


Outcome = tuple[bool, str, str, dict[str, str]]  # healthy, message, target, extra details


async def _published(spec: ServiceSpec, check: HealthCheck) -> Outcome:
    """tcp or http, to the host port that publishes the check's container port."""
    assert check.port is not None  # the spec validated it for tcp and http
    try:
        port = spec.host_port_for(check.port)
    except KeyError:
        return False, f"container port {check.port} is not published", "", {}
    if check.type == "tcp":
        return await _tcp(spec, check, port)
    return await _http(check, port)


async def _tcp(spec: ServiceSpec, check: HealthCheck, port: int) -> Outcome:
    target = f"{PROBE_HOST}:{port}"
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(PROBE_HOST, port)
    except TimeoutError:
        return False, f"no connection to {target} within {check.timeout:g}s", target, {}
    except OSError as exc:
        return False, f"cannot connect to {target}: {exc.strerror or exc}", target, {}
    try:
        # Without Docker's proxy in between (host network) the connection itself is the answer.
        if spec.network_mode != "host" and await _closed_at_once(reader, check.timeout):
            return (False, f"{target} closed the connection at once: nothing listens on "
                    f"container port {check.port}", target, {})
        return True, f"accepting connections on {target}", target, {}
    finally:
        writer.close()


async def _closed_at_once(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        async with asyncio.timeout(min(TCP_SETTLE_S, timeout / 2)):
            return await reader.read(1) == b""
    except TimeoutError:
        return False  # held open: a listener took it
    except OSError:
        return True  # reset


async def _http(check: HealthCheck, port: int) -> Outcome:
    url = f"http://{PROBE_HOST}:{port}{check.path}"
    # A fresh connection per probe (a pooled one could outlive the server), no proxies from
    # the environment, and no redirects: probe traffic stays on 127.0.0.1.
    try:
        async with (
            asyncio.timeout(check.timeout),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                  trust_env=False) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            status = response.status
    except TimeoutError:
        return False, f"no answer from {url} within {check.timeout:g}s", url, {}
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"GET {url} failed: {exc or type(exc).__name__}", url, {}
    extra = {"http_status": str(status)}
    if 200 <= status < 400:
        return True, f"GET {url}: {status}", url, extra
    return False, f"GET {url}: HTTP {status}", url, extra


async def _exec(engine: DockerEngine, state: ContainerState, check: HealthCheck) -> Outcome:
    command = list(check.command or [])
    target = " ".join(command)
    try:
        code, output = await exec_in(engine, state.id, command, check.timeout)
    except DeadlineExceeded:
        return False, f"{target!r} did not finish within {check.timeout:g}s", target, {}
    except (FailedPrecondition, NotFound) as exc:
        return False, str(exc), target, {}
    extra = {"exit_code": str(code)}
    tail = output.strip()[-200:]
    if code == 0:
        return True, f"{target!r} exited 0", target, extra
    return False, f"{target!r} exited {code}" + (f": {tail}" if tail else ""), target, extra


async def _docker(engine: DockerEngine, state: ContainerState) -> Outcome:
    # Read it now rather than trusting the caller's snapshot, which may be seconds old.
    try:
        current = await inspect_state(engine, state.id)
    except NotFound:
        return False, "container is gone", state.name, {}
    if not current.running:
        return False, f"container is {current.state}", state.name, {}
    health = current.health
    if health is None:
        return False, "the image defines no HEALTHCHECK", state.name, {}
    if health == "healthy":
        return True, "docker health status: healthy", state.name, {"docker_health": health}
    return False, f"docker health status: {health}", state.name, {"docker_health": health}
