"""Start a daemon as a real subprocess on free ports, know when it is ready, stop it with signals.

Readiness comes from the systemd notify protocol: each daemon gets its own NOTIFY_SOCKET, bound
here, and is ready when READY=1 arrives. No polling, no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPO = Path(__file__).resolve().parent.parent
MODULES = {
    "env-manager": "agent_infra.env_manager",
    "orchestrator": "agent_infra.orchestrator",
    # env-manager plus a slow RPC and an endless stream, for shutdown tests
    "slow": "tests.slow_daemon",
}
# Variables a developer's shell may carry that would steer the daemon under test.
_STRIPPED_PREFIXES = ("ENV_MANAGER_", "ORCHESTRATOR_", "NOTIFY_SOCKET", "WATCHDOG_")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET.

    Served by an asyncio datagram endpoint, so closing it never races a pending read (a raw
    sock_recv cancelled at close could leave a reader on an fd the kernel hands out again).
    """

    def __init__(self) -> None:
        # AF_UNIX paths are limited to ~108 bytes: keep it short, outside pytest's tmp_path.
        self._dir = tempfile.mkdtemp(prefix="ai-notify-")
        self.path = os.path.join(self._dir, "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        self._arrived = asyncio.Event()
        self._transport: asyncio.BaseTransport | None = None

    async def _ensure_open(self) -> None:
        if self._transport is not None:
            return
        listener = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                lines = data.decode().splitlines()
                listener.messages.append(dict(line.split("=", 1) for line in lines if "=" in line))
                listener._arrived.set()

        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Protocol, sock=self._sock)

    async def wait_for(self, key: str, value: str = "1", timeout: float = 30.0) -> dict[str, str]:
        """The first message (already received or new) that sets key=value."""
        await self._ensure_open()
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages[seen:]:
                    if message.get(key) == value:
                        return message
                seen = len(self.messages)
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in a daemon's output, parsed (other lines are skipped)."""
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def log_events(text: str) -> list[str]:
    """The `event` of each JSON log line in a daemon's output."""
    return [str(record["event"]) for record in log_records(text) if "event" in record]


@dataclass
class DaemonProcess:
    name: str
    process: asyncio.subprocess.Process
    grpc_port: int
    http_port: int
    notify: NotifyListener
    log_path: Path
    #: seconds from exec to READY=1
    ready_seconds: float = 0.0
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.grpc_addr)
        self.channels.append(channel)
        return channel

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; SIGKILL only if it does not go in time."""
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout}s:\n{self.log_text()}"
            ) from None


class PortTaken(AssertionError):
    """The daemon found a port free_port() picked already taken by someone else."""


# free_port() closes its socket before the daemon binds: another process may take the port in
# between. A daemon that exits for that reason is started again on other ports.
PORT_ATTEMPTS = 3


async def start_daemon(
    name: str,
    workdir: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    stderr: Path | None = None,
) -> DaemonProcess:
    """Start `name` on free loopback ports and return once it has sent READY=1.

    Its stdout and stderr go to `log_path` (log_text()), or stderr to its own file `stderr`.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return await _start_once(name, workdir, args=args, env=env, timeout=timeout,
                                     stderr=stderr)
        except PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _start_once(name: str, workdir: Path, *, args: Sequence[str],
                      env: Mapping[str, str] | None, timeout: float,
                      stderr: Path | None) -> DaemonProcess:
    grpc_port, http_port = free_port(), free_port()
    notify = NotifyListener()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES)}
    child_env.update({"NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1"})
    child_env.update(env or {})
    log_path = workdir / f"{name}-{grpc_port}.log"
    command = [sys.executable, "-m", MODULES[name], "--grpc-addr", f"127.0.0.1:{grpc_port}",
               "--http-addr", f"127.0.0.1:{http_port}", "--log-format", "json", *args]
    began = time.monotonic()
    with log_path.open("wb") as log_file, contextlib.ExitStack() as files:
        err: Any = (files.enter_context(stderr.open("wb")) if stderr is not None
                    else asyncio.subprocess.STDOUT)
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, env=child_env, stdout=log_file, stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
        )
    daemon = DaemonProcess(name, process, grpc_port, http_port, notify, log_path)
    ready = asyncio.ensure_future(notify.wait_for("READY", timeout=timeout))
    exited = asyncio.ensure_future(process.wait())
    done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        notify.close()
        text = daemon.log_text()
        taken = any(sign in text.lower() for sign in ("address already in use",
                                                      "failed to bind to address"))
        failure = PortTaken if taken else AssertionError
        raise failure(f"{name} exited with {process.returncode} before READY=1:\n{text}")
    exited.cancel()
    if ready.exception() is not None:
        process.kill()
        await process.wait()
        notify.close()
        raise AssertionError(f"{name} sent no READY=1 within {timeout}s:\n{daemon.log_text()}")
    daemon.ready_seconds = time.monotonic() - began
    return daemon


@contextlib.asynccontextmanager
async def running_daemon(
    name: str, workdir: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> AsyncIterator[DaemonProcess]:
    """A started daemon that is always stopped (SIGTERM) and cleaned up afterwards."""
    daemon = await start_daemon(name, workdir, args=args, env=env)
    try:
        yield daemon
    finally:
        for channel in daemon.channels:
            await channel.close()
        await daemon.stop()
        daemon.notify.close()


async def run_to_exit(
    name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run a daemon expected to exit by itself (bad config); its exit code and output."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES)}
    child_env.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", MODULES[name], *args, cwd=REPO, env=child_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Wait for a condition that has no event to await (a metric, a file), bounded in time."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def fetch_metrics(daemon: DaemonProcess) -> dict[str, list[Sample]]:
    """The daemon's /metrics, parsed by prometheus_client: family name -> samples."""
    async with aiohttp.ClientSession() as session, session.get(
        f"{daemon.http_url}/metrics"
    ) as response:
        response.raise_for_status()
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample_value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
    return sum(
        sample.value for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
