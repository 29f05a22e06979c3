"""Local daemons for `AgentInfra`'s auto_start: find out whether a daemon answers, start one
(``python -m agent_infra.env_manager`` / ``agent_infra.orchestrator``) in its own session with its
output in a log file and its pid in a pid file, wait for grpc.health.v1 SERVING, stop it.

Daemons started *attached* (by ``async with AgentInfra.start(auto_start=True)``) are also
remembered process-wide and sent SIGTERM at interpreter exit if nobody stopped them before;
*detached* ones (``AgentInfra.start().start()``) are left running, like ``agent-infra up``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import site
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._transport import ConnectionConfig, ServiceTarget, create_channel
from .errors import InfraUnavailable

__all__ = [
    "DAEMON_MODULES",
    "LocalDaemon",
    "default_state_dir",
    "http_address_for",
    "is_loopback",
    "probe",
    "spawn",
    "wait_serving",
]

#: Daemon name -> the module ``python -m`` runs.
DAEMON_MODULES = {
    "env-manager": "agent_infra.env_manager",
    "orchestrator": "agent_infra.orchestrator",
}
# A started daemon must not report to the caller's own systemd unit.
_STRIPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})
STOP_TIMEOUT = 30.0
# How long interpreter exit waits for attached daemons it sent SIGTERM to.
EXIT_WAIT = 10.0


def default_state_dir() -> Path:
    """Where logs and pid files go by default: ``~/.local/state/agent-infra``."""
    return Path.home() / ".local" / "state" / "agent-infra"


def is_loopback(address: str) -> bool:
    """True for a ``host:port`` on this machine: only those can be auto-started."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return False
    return host.strip("[]").lower() in _LOOPBACK_HOSTS


def http_address_for(grpc_address: str, default_grpc: str, default_http: str,
                     env_name: str) -> str:
    """The HTTP (/health, /metrics) address for a daemon started on `grpc_address`.

    The daemon's environment variable when set; the default HTTP port next to the default
    gRPC port; else a free loopback port (a second stack on other ports must not collide).
    """
    configured = os.environ.get(env_name, "").strip()
    if configured:
        return configured
    if grpc_address == default_grpc:
        return default_http
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class LocalDaemon:
    """A daemon started on this machine by the client."""

    #: "env-manager" or "orchestrator".
    name: str
    pid: int
    grpc_address: str
    http_address: str
    log_path: Path
    pid_path: Path
    #: False: stopped when the AgentInfra that started it closes (or at interpreter exit).
    detached: bool
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """True while the process runs (a zombie does not count)."""
        if self._process is not None:
            return self._process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)

    def exit_code(self) -> int | None:
        """The exit code once it ended, when this process started it; else None."""
        return self._process.poll() if self._process is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log, for error messages."""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(tail)

    def terminate(self) -> None:
        """Send SIGTERM (graceful: the daemon drains, then exits) and return at once."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait for the exit; SIGKILL if it has not gone after `timeout` seconds."""
        self.terminate()
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                if self._process is not None:
                    await asyncio.to_thread(self._process.wait)
                break
            await asyncio.sleep(0.05)
        _forget(self)
        with contextlib.suppress(OSError):
            if self.pid_path.read_text().strip() == str(self.pid):
                self.pid_path.unlink()


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _source_root() -> Path | None:
    """The checkout holding this `client` package and `services`, when not an installed copy.

    Found from this file, not by importing "services": the caller may have a module of that
    name of its own (an app's services.py).
    """
    root = Path(__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in (*site.getsitepackages(),
                                             site.getusersitepackages())}
    if root in installed or not (root / "services" / "__init__.py").is_file():
        return None
    return root


def spawn(name: str, grpc_address: str, http_address: str, args: Sequence[str],
          state_dir: Path, *, detached: bool) -> LocalDaemon:
    """Start daemon `name` in its own session; returns at once (see `wait_serving`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    pid_path = state_dir / f"{name}.pid"
    # -P: the caller's working directory is not put on the daemon's sys.path.
    command = [sys.executable, "-P", "-m", DAEMON_MODULES[name], "--grpc-addr", grpc_address,
               "--http-addr", http_address, "--log-format", "json", *args]
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    root = _source_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), *filter(None, [env.get("PYTHONPATH")])])
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                  f"{' '.join(command)}\n".encode())
        log.flush()
        # Its own session: a Ctrl-C in the caller's terminal does not reach it (a second
        # signal would make it exit at once instead of draining), and a detached one
        # outlives the caller.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   close_fds=True)
    pid_path.write_text(f"{process.pid}\n")
    daemon = LocalDaemon(name, process.pid, grpc_address, http_address, log_path, pid_path,
                         detached, process)
    (_DETACHED if detached else _ATTACHED).append(daemon)
    return daemon


async def probe(address: str, config: ConnectionConfig, target: ServiceTarget,
                timeout: float) -> str | None:
    """grpc.health.v1 state of the daemon at `address` ("SERVING", "NOT_SERVING", or the
    status code of a refused check, e.g. "UNAUTHENTICATED"); None when nothing answers."""
    channel = create_channel(address, config, target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            return str(exc.code().name)  # something answers gRPC there
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    finally:
        await channel.close()


async def wait_serving(daemon: LocalDaemon, config: ConnectionConfig, target: ServiceTarget,
                       timeout: float) -> None:
    """Return once `daemon` reports SERVING; InfraUnavailable (with its log tail) when it
    exits first or is not serving within `timeout` seconds (it is stopped then)."""
    deadline = time.monotonic() + timeout
    state: str | None = None
    while time.monotonic() < deadline:
        if not daemon.alive():
            code = daemon.exit_code()
            _forget(daemon)
            raise InfraUnavailable(
                f"{daemon.name} exited{f' with code {code}' if code is not None else ''} "
                f"before serving on {daemon.grpc_address}; log {daemon.log_path}:\n"
                f"{daemon.log_tail()}", address=daemon.grpc_address)
        state = await probe(daemon.grpc_address, config, target, timeout=1.0)
        if state == "SERVING":
            return
        await asyncio.sleep(0.1)
    await daemon.stop()
    raise InfraUnavailable(
        f"{daemon.name} (pid {daemon.pid}) was not serving on {daemon.grpc_address} within "
        f"{timeout:g} s ({state or 'no answer'}), so it was stopped; log {daemon.log_path}:\n"
        f"{daemon.log_tail()}", address=daemon.grpc_address)


# -- attached daemons left running at interpreter exit -----------------------------------------

_ATTACHED: list[LocalDaemon] = []
# Detached daemons started by this process: held so their Popen objects are not collected
# (and warned about) while this process lives; released, still running, at exit.
_DETACHED: list[LocalDaemon] = []


def _forget(daemon: LocalDaemon) -> None:
    for registry in (_ATTACHED, _DETACHED):
        with contextlib.suppress(ValueError):
            registry.remove(daemon)


def _stop_attached_at_exit() -> None:
    daemons = [d for d in _ATTACHED if d.alive()]
    for daemon in daemons:
        daemon.terminate()
    deadline = time.monotonic() + EXIT_WAIT
    for daemon in daemons:
        while daemon.alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def _release_detached_at_exit() -> None:
    for daemon in _DETACHED:
        process = daemon._process
        if process is not None and process.poll() is None:
            # Left running on purpose (like `agent-infra up`): mark the Popen as finished so
            # its finalizer does not report "subprocess ... is still running".
            process.returncode = 0


atexit.register(_stop_attached_at_exit)
atexit.register(_release_detached_at_exit)


def attached_daemons() -> list[LocalDaemon]:
    """Attached daemons still remembered (started, not yet stopped)."""
    return list(_ATTACHED)


def describe(daemon: LocalDaemon) -> dict[str, Any]:
    """A JSON-friendly view, for logs and the CLI."""
    return {"name": daemon.name, "pid": daemon.pid, "grpc_address": daemon.grpc_address,
            "http_address": daemon.http_address, "log": str(daemon.log_path),
            "detached": daemon.detached}
