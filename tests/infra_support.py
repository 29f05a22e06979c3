"""A real orchestrator + env-manager pair for client tests: free ports, a stack name of its own
(so its task containers can be found, and removed, by label), data under the test's tmp_path."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.daemon_support import DaemonProcess, running_daemon
from tests.env_support import config_text, remove_stack_containers, stack_name


@dataclass
class Pair:
    env_manager: DaemonProcess
    orchestrator: DaemonProcess
    stack: str
    env_config: Path


def env_manager_config(tmp_path: Path, stack: str) -> Path:
    """env-manager config: the stack name, and cpu_short running local/busybox."""
    path = tmp_path / f"{stack}.toml"
    path.write_text(config_text(stack, ""))
    return path


@contextlib.asynccontextmanager
async def daemon_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """env-manager, and an orchestrator dispatching to it; both stopped and cleaned up after."""
    stack = stack_name()
    config = env_manager_config(tmp_path, stack)
    try:
        async with running_daemon(
            "env-manager", tmp_path,
            args=["--config", str(config), "--state-dir", str(tmp_path / "em-state")],
        ) as env_manager, running_daemon(
            "orchestrator", tmp_path,
            args=["--env-managers", env_manager.grpc_addr,
                  "--data-dir", str(tmp_path / "orch-data")],
        ) as orchestrator:
            yield Pair(env_manager, orchestrator, stack, config)
    finally:
        await remove_stack_containers(stack)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, which has exited, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def wait_pid_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_leftover(pid: int) -> None:
    """Last resort in a test's cleanup: no daemon may outlive the test."""
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_pid_gone(pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
