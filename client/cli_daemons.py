"""The daemons `agent-infra up` started, for `agent-infra down`.

`up` starts daemons through `AgentInfra.start(...).start()` (client/_launcher.py): detached, in
their own session, with ``env-manager.pid`` / ``orchestrator.pid`` and their logs in the state
directory (``--state-dir``, default ``~/.local/state/agent-infra``, the same directory the
Python API uses, so `down` also stops daemons started by ``AgentInfra.start().start()``).
"""

from __future__ import annotations

from pathlib import Path

from . import _launcher
from ._launcher import DAEMON_MODULES, LocalDaemon

__all__ = ["recorded_daemon", "state_dir"]


def state_dir(configured: str | None) -> Path:
    """``--state-dir`` when given, else the launcher's default."""
    if configured:
        return Path(configured).expanduser().resolve()
    return _launcher.default_state_dir()


def recorded_daemon(name: str, directory: Path) -> LocalDaemon | None:
    """The daemon whose pid file is in `directory`, when that pid is still that daemon.

    A stale pid file (the process is gone, or the pid now belongs to another program) is
    removed and None returned, so `down` never signals an unrelated process.
    """
    pid_path = directory / f"{name}.pid"
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    daemon = LocalDaemon(name, pid, "", "", directory / f"{name}.log", pid_path, detached=True)
    if not daemon.alive() or not _runs_module(pid, name):
        pid_path.unlink(missing_ok=True)
        return None
    return daemon


def _runs_module(pid: int, name: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc to ask: trust the pid file
    module = DAEMON_MODULES[name].encode()
    return module in argv or any(arg.endswith(b"/" + name.encode()) for arg in argv)
