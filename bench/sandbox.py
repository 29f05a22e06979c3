"""Agent sandboxes: warm task containers against cold ones, at the env-manager and through the
orchestrator, with the engine's floor and CPU, all measured in one run.

    .venv/bin/python bench/sandbox.py [--serial 40] [--tasks 50] [--concurrency 4] [--strict]

One env-manager daemon (own stack name and --state-dir) serves two classes that differ only in
`warm`: cpu_warm (warm = WARM) and cpu_cold (warm = 0), both local/busybox:latest, network none,
concurrency CLASS_CONCURRENCY (warm containers count against it). One orchestrator daemon (own
--data-dir) dispatches both classes to it. Every task runs ["true"] with a task id unique per run.

Section "warm tasks" (warm_tasks below):
  engine floor   not judged: the engine's own cost of the warm way, without env-manager: a
                 container started ahead (same stub, same isolation flags) is handed ["true"]
                 over its attach stdin and waited for (aiodocker, this process).
  serial         --serial calls of each side, one at a time, alternating; before each call the
                 stack is let settle (WARM ready warm containers, nothing else): the latency of
                 a call that finds the pool full and the engine idle. p50 per side.
                   env-manager warm / cold: ExecuteTask on cpu_warm / cpu_cold.
                   orchestrator warm / cold: SubmitTask, then StreamTaskResults for the id until
                   it is terminal (as bench/client_overhead.py's raw stub).
                 Targets: env-manager warm <= 0.4x cold and < 80 ms; orchestrator warm within
                 30 ms of env-manager warm.
  throughput     --tasks ExecuteTask calls from --concurrency workers on each class (cold,
                 then warm, settled first): tasks/s, p50, how many ran warm (the engine's
                 event stream: containers created for the stack, by kind), and the engine's CPU
                 seconds for the batch: dockerd + containerd (utime+stime+cutime+cstime from
                 /proc; shared with whoever else uses the engine meanwhile), and the shims of
                 this stack's containers, sampled every SHIM_SAMPLE_S while they live
                 (approximate: a shim's last ms before its exit are missed). Not judged.
Afterwards no container of the run may be left. Exit 0 whatever the figures unless --strict
(then 1 when a target is missed); 2 when something fails.

Adding a section (the sandbox sessions' figures): write `async def section(ctx: Context) ->
Section` in a module of your own under bench/ (using ctx's daemons, stubs, label and docker
client; a task or container you make must carry the run's stack or BENCH_LABEL=ctx.label), and
add it to SECTIONS at the marked spot below. The config both daemons run is `configs` below;
add a class there if you need one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiodocker  # noqa: E402
import aiohttp  # noqa: E402
from agent_infra.env_manager.tasks import handover  # noqa: E402
from agent_infra.wire import env_manager_pb2 as em_pb  # noqa: E402
from agent_infra.wire import orchestrator_pb2 as orch_pb  # noqa: E402
from agent_infra.wire import orchestrator_pb2_grpc  # noqa: E402

from bench._support import (  # noqa: E402  (needs the repo root on sys.path)
    BENCH_LABEL,
    IMAGE,
    STACK_LABEL,
    Batch,
    BenchError,
    EnvManager,
    arguments,
    clean_up,
    env_manager,
    median,
    orchestrator_config,
    require_gone,
    require_image,
    run_and_report,
    run_batch,
    run_id,
)
from tests.daemon_support import DaemonProcess, running_daemon  # noqa: E402

if TYPE_CHECKING:
    from agent_infra.wire.orchestrator_pb2_grpc import OrchestratorServiceAsyncStub

WARM_CLASS, COLD_CLASS = "cpu_warm", "cpu_cold"
WARM = 4
CLASS_CONCURRENCY = 8
COMMAND = json.dumps(["true"])
TERMINAL = frozenset({"completed", "failed", "cancelled"})
CALL_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 60.0
SHIM_SAMPLE_S = 0.02
KIND_LABEL = "org.agent-infra.kind"
TARGET_WARM_RATIO, TARGET_WARM_MS, TARGET_ORCH_EXTRA_MS = 0.4, 80.0, 30.0


@dataclass
class Context:
    """What a section gets: the run's daemons and clients."""

    args: argparse.Namespace
    label: str  # the run id: the env-manager's stack name and the BENCH_LABEL value
    workdir: Path
    em: EnvManager
    orchestrator: DaemonProcess
    orch: OrchestratorServiceAsyncStub
    docker: aiodocker.Docker
    count: int = 0

    def task_id(self, tag: str) -> str:
        self.count += 1
        return f"{self.label}-{tag}-{self.count}"

    async def settle(self) -> None:
        """Until the stack holds exactly WARM running warm containers and nothing else."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            listed = await self.docker.containers.list(
                all=True, filters={"label": [f"{STACK_LABEL}={self.label}"]})
            warm = [c for c in listed if c["Labels"].get(KIND_LABEL) == "warm"
                    and c["State"] == "running"]
            if len(warm) == WARM and len(listed) == WARM:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the stack did not settle to {WARM} warm containers in "
                                 f"{SETTLE_TIMEOUT_S:g}s ({len(listed)} containers)")
            await asyncio.sleep(0.02)


@dataclass
class Section:
    """A section's result: the lines it prints and whether its targets are met."""

    lines: list[str] = field(default_factory=list)
    passed: bool = True


def configs(workdir: Path, label: str, em_addr: str = "") -> tuple[str, str]:
    """(env-manager TOML, orchestrator TOML); the orchestrator's needs the env-manager's address."""
    em = f'[stack]\nname = "{label}"\n'
    for name, warm in ((WARM_CLASS, WARM), (COLD_CLASS, 0)):
        em += (f'\n[workload_classes.{name}]\nimage = "{IMAGE}"\nconcurrency = '
               f'{CLASS_CONCURRENCY}\nwarm = {warm}\nnetwork_mode = "none"\n'
               'default_timeout = "60s"\nmax_timeout = "10m"\n')
    orch = orchestrator_config(workdir / "orchestrator-data", em_addr,
                               {WARM_CLASS: CLASS_CONCURRENCY, COLD_CLASS: CLASS_CONCURRENCY},
                               1_000_000)
    return em, orch


# --- the calls ------------------------------------------------------------------------------------


async def execute(ctx: Context, workload_class: str) -> None:
    task_id = ctx.task_id(workload_class)
    response = await ctx.em.stub.ExecuteTask(em_pb.ExecuteTaskRequest(
        task_id=task_id, workload_class=workload_class, payload={"command": COMMAND}),
        timeout=CALL_TIMEOUT_S)
    result = dict(response.result)
    if not response.success or result.get("exit_code") != "0" or result.get("cached") == "true":
        raise BenchError(f"ExecuteTask {task_id}: success={response.success} "
                         f"error={response.error!r} result={result}")


async def submit(ctx: Context, workload_class: str) -> None:
    task_id = ctx.task_id(f"o-{workload_class}")
    fields: dict[str, Any] = {"class": workload_class}  # `class` is a Python keyword
    submitted = await ctx.orch.SubmitTask(orch_pb.SubmitTaskRequest(
        id=task_id, payload={"command": COMMAND}, **fields), timeout=CALL_TIMEOUT_S)
    if not submitted.success:
        raise BenchError(f"SubmitTask {task_id}: {submitted.error}")
    call = ctx.orch.StreamTaskResults(orch_pb.StreamTaskResultsRequest(
        task_ids=[task_id], include_completed=True), timeout=CALL_TIMEOUT_S)
    status = ""
    try:
        async for item in call:
            if item.status in TERMINAL:
                status = item.status
                break
    finally:
        call.cancel()
    if status != "completed":
        raise BenchError(f"task {task_id} through the orchestrator ended {status or 'unknown'}")


async def engine_floor(ctx: Context) -> float:
    """One hand-over of ["true"] to a container started ahead, to its exit (seconds)."""
    from agent_infra.env_manager.docker.attach import Attachment
    from agent_infra.env_manager.docker.engine import DockerEngine
    from agent_infra.env_manager.settings import RetrySettings

    engine = DockerEngine(os.environ.get("DOCKER_HOST") or None, RetrySettings())
    try:
        config: dict[str, Any] = {
            "Image": IMAGE, "User": "65534:65534", "OpenStdin": True, "StdinOnce": True,
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
            "Cmd": list(handover.stub_command(handover.new_mark())),
            "Labels": {BENCH_LABEL: ctx.label},
            "HostConfig": {"NetworkMode": "none", "CapDrop": ["ALL"],
                           "SecurityOpt": ["no-new-privileges"], "PidsLimit": 256,
                           "Memory": 1 << 30, "MemorySwap": 1 << 30}}
        container = await engine.client.containers.create(config,
                                                           name=f"{ctx.label}-floor-{ctx.count}")
        ctx.count += 1
        output = Attachment(engine, container.id, stdin=False)
        inlet = Attachment(engine, container.id, stdin=True)
        await output.open()
        await inlet.open()
        await container.start()
        await ctx.settle()
        began = time.perf_counter()
        await inlet.send_stdin(handover.script(["true"], {}, None))
        await container.wait()
        took = time.perf_counter() - began
        await inlet.close()
        await output.close()
        await container.delete(force=True)
        return took
    finally:
        await engine.close()


def _ticks(pid: str) -> int:
    """utime + stime + cutime + cstime of a process, in clock ticks (-1: gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return -1
    return sum(int(value) for value in fields[11:15])  # after the comm, state is fields[0]


def _processes(*names: str) -> dict[str, str]:
    """pid -> command line of the processes whose comm is one of `names`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found[entry.name] = (entry / "cmdline").read_bytes().decode(errors="replace")
    return found


@dataclass
class EngineWatch:
    """Over a batch: the containers the engine made for the stack, by kind (a cold task makes a
    kind=task one, a refill a kind=warm one), from its live event stream; the CPU seconds of
    dockerd + containerd (exact, but shared with anyone else using the engine) and of the shims
    of this stack's containers (sampled every SHIM_SAMPLE_S while they live: approximate)."""

    made: dict[str, int] = field(default_factory=dict)
    daemons_s: float = 0.0
    shims_s: float = 0.0
    ours: set[str] = field(default_factory=set)
    shims: dict[str, tuple[int, int]] = field(default_factory=dict)  # pid -> first, last ticks


async def _events(ctx: Context, watch: EngineWatch, subscribed: asyncio.Event) -> None:
    filters = json.dumps({"type": ["container"], "event": ["create"],
                          "label": [f"{STACK_LABEL}={ctx.label}"]})
    async with ctx.docker._query("events", params={"filters": filters},
                                 timeout=aiohttp.ClientTimeout()) as response:
        subscribed.set()
        async for line in response.content:
            if line.strip():
                event = json.loads(line)
                kind = event["Actor"]["Attributes"].get(KIND_LABEL, "")
                watch.made[kind] = watch.made.get(kind, 0) + 1
                watch.ours.add(event["Actor"]["ID"])


async def _sample_shims(watch: EngineWatch) -> None:
    while True:
        for pid, cmdline in _processes("containerd-shim", "containerd-shim-runc-v2").items():
            if any(cid in cmdline for cid in watch.ours):
                ticks = _ticks(pid)
                if ticks >= 0:
                    watch.shims[pid] = (watch.shims.get(pid, (ticks, ticks))[0], ticks)
        await asyncio.sleep(SHIM_SAMPLE_S)


@contextlib.asynccontextmanager
async def engine_watch(ctx: Context) -> AsyncIterator[EngineWatch]:
    hertz = os.sysconf("SC_CLK_TCK")
    daemons = list(_processes("dockerd", "containerd"))
    if not daemons:
        raise BenchError("no dockerd/containerd process in /proc (engine in another PID "
                         "namespace?): the engine's CPU cannot be read")
    watch = EngineWatch()
    subscribed = asyncio.Event()
    helpers = [asyncio.create_task(_events(ctx, watch, subscribed)),
               asyncio.create_task(_sample_shims(watch))]
    ready = asyncio.ensure_future(subscribed.wait())
    await asyncio.wait([helpers[0], ready], return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if helpers[0].done():
        helpers[1].cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        raise BenchError(f"the engine's event stream ended at once: {helpers[0]!r}")
    before = {pid: _ticks(pid) for pid in daemons}
    try:
        yield watch
        after = {pid: _ticks(pid) for pid in daemons}
        await asyncio.sleep(0.5)  # the last events on their way
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    watch.daemons_s = sum(after[pid] - before[pid] for pid in daemons) / hertz
    watch.shims_s = sum(last - first for first, last in watch.shims.values()) / hertz


# --- the warm tasks section -----------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return seconds * 1000


def _executor(ctx: Context, workload_class: str) -> Callable[[int], Awaitable[None]]:
    return lambda _index: execute(ctx, workload_class)


async def warm_tasks(ctx: Context) -> Section:
    args = ctx.args
    section = Section()
    floor: list[float] = []
    for _ in range(max(5, args.serial // 4)):
        floor.append(await engine_floor(ctx))
    await ctx.settle()
    sides: dict[str, Callable[[], Awaitable[None]]] = {
        "env-manager warm": lambda: execute(ctx, WARM_CLASS),
        "env-manager cold": lambda: execute(ctx, COLD_CLASS),
        "orchestrator warm": lambda: submit(ctx, WARM_CLASS),
        "orchestrator cold": lambda: submit(ctx, COLD_CLASS),
    }
    serial: dict[str, list[float]] = {side: [] for side in sides}
    for number in range(args.serial):
        order = list(sides) if number % 2 else list(reversed(sides))
        for side in order:
            await ctx.settle()
            began = time.perf_counter()
            await sides[side]()
            serial[side].append(time.perf_counter() - began)
    p50 = {side: _ms(median(values)) for side, values in serial.items()}
    warm, cold = p50["env-manager warm"], p50["env-manager cold"]
    ratio, extra = warm / cold, p50["orchestrator warm"] - warm
    ok_ratio, ok_ms, ok_orch = ratio <= TARGET_WARM_RATIO, warm < TARGET_WARM_MS, \
        extra <= TARGET_ORCH_EXTRA_MS
    section.passed = ok_ratio and ok_ms and ok_orch
    section.lines += [
        f"serial: {args.serial} calls per side, a trivial task (`true`), pool full and stack "
        "settled before each call",
        f"  {'engine floor (aiodocker, no env-manager)':<44}p50 {_ms(median(floor)):6.1f} ms",
        *(f"  {side:<44}p50 {value:6.1f} ms" for side, value in p50.items()),
        f"  env-manager warm/cold {ratio:.2f}x (target <= {TARGET_WARM_RATIO}x) "
        f"{'PASS' if ok_ratio else 'FAIL'}; warm {warm:.1f} ms (target < {TARGET_WARM_MS:g} ms) "
        f"{'PASS' if ok_ms else 'FAIL'}",
        f"  orchestrator warm - env-manager warm: {extra:+.1f} ms (target <= "
        f"{TARGET_ORCH_EXTRA_MS:g} ms) {'PASS' if ok_orch else 'FAIL'}",
    ]
    section.lines.append(f"throughput: {args.tasks} ExecuteTask at concurrency "
                         f"{args.concurrency} (class concurrency {CLASS_CONCURRENCY}, warm "
                         f"{WARM}); engine CPU s: dockerd+containerd, shims (sampled)")
    for name, workload_class in (("cold", COLD_CLASS), ("warm", WARM_CLASS)):
        await ctx.settle()
        async with engine_watch(ctx) as watch:
            batch: Batch = await run_batch(args.tasks, args.concurrency,
                                           _executor(ctx, workload_class))
        per_task = (watch.daemons_s + watch.shims_s) / args.tasks * 1000
        section.lines.append(
            f"  {name:<6}{args.tasks / batch.seconds:6.1f} tasks/s  p50 "
            f"{_ms(median(batch.latencies)):6.0f} ms  engine CPU {watch.daemons_s:5.2f} s + "
            f"shims {watch.shims_s:5.2f} s ({per_task:.0f} ms per task); "
            f"{args.tasks - watch.made.get('task', 0)} tasks ran warm, "
            f"{watch.made.get('warm', 0)} warm containers made")
    return section


# Sections run in this order, each after the daemons are up. ADD YOURS HERE, e.g.
#   from bench.sandbox_sessions import sandbox_sessions; SECTIONS.append(("sandbox sessions",
#   sandbox_sessions)).
SECTIONS: list[tuple[str, Callable[[Context], Awaitable[Section]]]] = [
    ("warm tasks", warm_tasks),
]


def _sandbox_sessions() -> Callable[[Context], Awaitable[Section]]:
    from bench._sandbox_sessions import section  # imports this module: load it when run

    return section


SECTIONS.append(("sandbox sessions", lambda ctx: _sandbox_sessions()(ctx)))


# --- the run --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[tuple[str, Section]]:
    await require_image()
    label = run_id()
    workdir = Path(tempfile.mkdtemp(prefix="ai-bench-sandbox-"))
    print(f"sandbox: run {label}, files in {workdir}", file=sys.stderr, flush=True)
    results: list[tuple[str, Section]] = []
    try:
        em_text, _ = configs(workdir, label)
        (workdir / "env-manager.toml").write_text(em_text)
        async with env_manager(workdir, workdir / "env-manager.toml") as em, \
                aiodocker.Docker() as docker:
            _, orch_text = configs(workdir, label, em.daemon.grpc_addr)
            (workdir / "orchestrator.toml").write_text(orch_text)
            async with running_daemon("orchestrator", workdir, args=[
                    "--config", str(workdir / "orchestrator.toml")]) as orchestrator:
                stub = cast("OrchestratorServiceAsyncStub",
                            orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator.channel()))
                ctx = Context(args, label, workdir, em, orchestrator, stub, docker)
                await ctx.settle()
                for _ in range(3):  # warm-up: connections, first dispatch
                    await execute(ctx, COLD_CLASS)
                    await submit(ctx, COLD_CLASS)
                for name, section in SECTIONS:
                    print(f"section {name}...", file=sys.stderr, flush=True)
                    results.append((name, await section(ctx)))
        await require_gone(STACK_LABEL, label, "after the env-manager stopped")
        await require_gone(BENCH_LABEL, label, "after the run")
    finally:
        await clean_up("sandbox", (STACK_LABEL, label), (BENCH_LABEL, label))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(results: list[tuple[str, Section]]) -> bool:
    for name, section in results:
        print(f"\n== {name}")
        for line in section.lines:
            print(line)
    return all(section.passed for _, section in results)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--serial", type=int, default=40, help="serial calls per side")
    parser.add_argument("--tasks", type=int, default=50, help="tasks per throughput batch")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once")
    parser.add_argument("--keep", action="store_true", help="keep the configs and daemon logs")
    args = parser.parse_args(argv)
    if args.serial < 1 or args.tasks < 1 or args.concurrency < 1:
        parser.error("--serial, --tasks and --concurrency must be at least 1")
    return run_and_report("sandbox", run(args), report, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
