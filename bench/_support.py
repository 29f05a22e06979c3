"""What the benches share: errors and exit statuses, the baseline server, batches of calls, daemon
configs, /proc readings, and for the Docker benches the docker CLI, label clean-up and a running
env-manager.

Every container a bench makes carries BENCH_LABEL=<run id>, unique per run, so clean-up removes
exactly this run's containers (other people test on the same engine) and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent_infra.wire import env_manager_pb2_grpc  # noqa: E402  (needs the repo root on sys.path)

from tests.daemon_support import (  # noqa: E402
    DaemonProcess,
    NotifyListener,
    free_port,
    running_daemon,
)

if TYPE_CHECKING:
    from agent_infra.wire.env_manager_pb2_grpc import EnvManagerServiceAsyncStub

IMAGE = "local/busybox:latest"
BENCH_LABEL = "org.agent-infra.bench"
STACK_LABEL = "org.agent-infra.stack"  # services/env_manager/labels.py
COMMAND_TIMEOUT_S = 300.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
BASELINE_SERVER = Path(__file__).with_name("_baseline_server.py")

T = TypeVar("T")


class BenchError(Exception):
    """Something did not work the way it must; the figures would mean nothing."""


# --- the command line and the exit status ---------------------------------------------------------


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A bench's parser: the first paragraph of its docstring as description, and --strict."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def run_and_report(name: str, work: Coroutine[Any, Any, T], report: Callable[[T], bool], *,
                   strict: bool) -> int:
    """Run `work`, then `report` its figures (True: every target met); the bench's exit status.

    2 when the run fails: a BenchError, or an AssertionError (tests.daemon_support's way of
    saying a daemon did not start or stop). Otherwise 1 when `strict` and a target is missed, 0.
    """
    try:
        figures = asyncio.run(work)
    except (BenchError, AssertionError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    all_pass = report(figures)
    return 1 if strict and not all_pass else 0


# --- processes: the baseline server, stopping, /proc ----------------------------------------------


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def status_mb(key: str, pid: int | str = "self") -> float:
    """VmRSS, VmHWM, ... of a process from /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} for pid {pid}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class ServerProcess:
    """A gRPC server in a subprocess: a daemon, or the baseline; its output goes to log_path."""

    name: str
    addr: str
    process: asyncio.subprocess.Process
    log_path: Path
    ready_s: float = 0.0  # exec to READY=1

    @classmethod
    def of(cls, daemon: DaemonProcess) -> ServerProcess:
        return cls(daemon.name, daemon.grpc_addr, daemon.process, daemon.log_path,
                   daemon.ready_seconds)

    def log_text(self) -> str:
        return read_log(self.log_path)

    def require_alive(self) -> None:
        if self.process.returncode is not None:
            raise BenchError(f"{self.name} exited {self.process.returncode}:\n{self.log_text()}")

    async def stop(self) -> float:
        """SIGTERM; seconds until it exits. Anything but exit 0 within STOP_TIMEOUT_S fails."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                code = await self.process.wait()
        except TimeoutError:
            await self.kill()
            raise BenchError(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_S:g}s") from None
        if code != 0:
            output = await asyncio.to_thread(self.log_text)
            raise BenchError(f"{self.name} exited {code} after SIGTERM (expected 0):\n{output}")
        return time.monotonic() - began

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_baseline(workdir: Path, mode: str | None = None, *,
                         name: str = "baseline") -> ServerProcess:
    """bench/_baseline_server.py (`mode`: see there) on a free loopback port, as the daemons are
    started by tests.daemon_support.start_daemon; returns once it has sent READY=1."""
    notify = NotifyListener()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update({"NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1"})
    port = free_port()
    log_path = workdir / f"{name.replace(' ', '-')}-{port}.log"
    try:
        began = time.monotonic()
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(BASELINE_SERVER), f"127.0.0.1:{port}",
                *([mode] if mode else []), cwd=REPO, env=env, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        server = ServerProcess(name, f"127.0.0.1:{port}", process, log_path)
        ready = asyncio.ensure_future(notify.wait_for("READY", timeout=START_TIMEOUT_S))
        exited = asyncio.ensure_future(process.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if ready not in done or ready.exception() is not None:
            ready.cancel()
            await server.kill()
            raise BenchError(f"{name} sent no READY=1 within {START_TIMEOUT_S:g}s (exit status "
                             f"{process.returncode}):\n{server.log_text()}")
        server.ready_s = time.monotonic() - began
        return server
    finally:
        notify.close()


@contextlib.asynccontextmanager
async def baseline(workdir: Path, mode: str | None = None, *,
                   name: str = "baseline") -> AsyncIterator[ServerProcess]:
    """start_baseline, stopped (exit 0 required) on the way out, killed if the body failed."""
    server = await start_baseline(workdir, mode, name=name)
    try:
        yield server
    except BaseException:
        await server.kill()
        raise
    await server.stop()


# --- calls: batches and daemon configs ------------------------------------------------------------


@dataclass
class Batch:
    seconds: float
    latencies: list[float]
    #: CPU time of this process (the caller: its Python code and gRPC's threads) for the batch.
    cpu_seconds: float


async def run_batch(count: int, concurrency: int,
                    one: Callable[[int], Awaitable[None]]) -> Batch:
    """`count` calls of `one(i)` from `concurrency` workers; wall time and per-call latency."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            began = time.perf_counter()
            await one(index)
            latencies.append(time.perf_counter() - began)

    began, cpu_began = time.perf_counter(), time.process_time()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure; the other workers are cancelled
    return Batch(time.perf_counter() - began, latencies, time.process_time() - cpu_began)


def orchestrator_config(data_dir: Path, env_manager: str, classes: Mapping[str, int],
                        max_backlog: int) -> str:
    """An orchestrator TOML config: its store in data_dir, one env-manager endpoint, and each
    class with its concurrency (0: nothing is dispatched) and max_backlog."""
    text = f'[store]\ndata_dir = "{data_dir}"\n\n[[env_managers]]\naddress = "{env_manager}"\n'
    for name, concurrency in classes.items():
        text += f"\n[classes.{name}]\nconcurrency = {concurrency}\nmax_backlog = {max_backlog}\n"
    return text


def env_manager_config(stack: str, concurrency: int, workload_class: str = "cpu_short") -> str:
    """An env-manager TOML config: stack `stack`, and one class running IMAGE, network none."""
    return (f'[stack]\nname = "{stack}"\n\n'
            f"[workload_classes.{workload_class}]\n"
            f'image = "{IMAGE}"\n'
            f"concurrency = {concurrency}\n"
            'network_mode = "none"\n'
            'default_timeout = "60s"\n'
            'max_timeout = "10m"\n')


# --- Docker ---------------------------------------------------------------------------------------


def run_id() -> str:
    """Short, unique, valid as a stack name, compose project name and container name part."""
    return f"aib{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class CommandResult:
    code: int
    output: str
    seconds: float


async def run_command(*argv: str, check: bool = True,
                      timeout: float = COMMAND_TIMEOUT_S) -> CommandResult:
    """Run argv (stdout and stderr together), timed from exec to exit."""
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"{' '.join(argv)} took more than {timeout:g}s") from None
    seconds = time.monotonic() - began
    result = CommandResult(process.returncode or 0, output.decode(errors="replace"), seconds)
    if check and result.code != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.code}:\n{result.output.strip()}")
    return result


async def require_image(image: str = IMAGE) -> None:
    probe = await run_command("docker", "image", "inspect", "--format", "{{.Id}}", image,
                              check=False)
    if probe.code != 0:
        raise BenchError(f"image {image} missing or engine unreachable ({probe.output.strip()}):"
                         " run scripts/bootstrap.sh")


async def container_ids(label: str, value: str) -> list[str]:
    """Containers (running or not) labelled label=value."""
    listed = await run_command("docker", "ps", "-aq", "--no-trunc", "--filter",
                               f"label={label}={value}")
    return listed.output.split()


async def remove_labelled(label: str, value: str) -> int:
    """Force-remove every container labelled label=value; how many there were."""
    ids = await container_ids(label, value)
    if ids:
        await run_command("docker", "rm", "-f", "-v", *ids, check=False)
    return len(ids)


async def require_gone(label: str, value: str, what: str) -> None:
    left = await container_ids(label, value)
    if left:
        raise BenchError(f"{what}: {len(left)} container(s) labelled {label}={value} remain")


async def clean_up(bench: str, *labels: tuple[str, str]) -> None:
    """Remove every container labelled with one of the (label, value) pairs, saying how many."""
    left = 0
    for label, value in labels:
        left += await remove_labelled(label, value)
    if left:
        print(f"{bench}: removed {left} container(s) left behind", file=sys.stderr)


@dataclass
class EnvManager:
    daemon: DaemonProcess
    stub: EnvManagerServiceAsyncStub


@contextlib.asynccontextmanager
async def env_manager(workdir: Path, config: Path, *,
                      args: Sequence[str] = ()) -> AsyncIterator[EnvManager]:
    """An env-manager subprocess serving `config`, with a state dir of its own; READY=1 on entry."""
    state = workdir / f"state-{uuid.uuid4().hex[:8]}"
    async with running_daemon(
        "env-manager", workdir,
        args=["--config", str(config), "--state-dir", str(state), *args],
    ) as daemon:
        # The stub is the aio one on an aio channel; grpc is untyped, so the overload cannot tell.
        stub = cast("EnvManagerServiceAsyncStub",
                    env_manager_pb2_grpc.EnvManagerServiceStub(daemon.channel()))
        yield EnvManager(daemon, stub)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"
