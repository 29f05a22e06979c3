"""The systemd notify protocol, spoken directly over the AF_UNIX datagram socket in NOTIFY_SOCKET.

No libsystemd: a message is newline-separated KEY=VALUE pairs in one datagram. Without
NOTIFY_SOCKET every call is a no-op, so the daemons behave the same outside systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

from . import logs
from .logs import get_logger

log = get_logger(__name__)


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked."""
        return self._watchdog_interval

    def send(self, **fields: str) -> None:
        if not self._address:
            return
        # Lines logged before a state change are on the log stream before systemd (or a test
        # reading the log on READY=1) hears of it, although the writer batches per loop turn.
        logs.flush()
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            # systemd going away must not take the daemon with it.
            log.warning("notify_failed", socket=self._address, error=str(exc))

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                                                    // 1000))

    def stopping(self, status: str = "shutting down") -> None:
        self.send(STOPPING="1", STATUS=status)

    async def run_watchdog(self) -> None:
        """Ping from the event loop itself, so a blocked loop stops the pings and systemd acts."""
        interval = self._watchdog_interval
        if interval is None or not self._address:
            return
        hang_file = os.environ.get(TEST_HANG_ENV, "")
        while True:
            if hang_file:
                _test_hang(hang_file)
            self.send(WATCHDOG="1")
            await asyncio.sleep(interval)


# Test-only hook (tests/integration/test_systemd_deploy.py): freeze the event loop so the systemd
# watchdog has something to kill. Off unless this variable names a file, which no shipped unit or
# example config sets; even then it fires only while that file holds this process's own pid, so
# the restarted daemon (a new pid) runs normally.
TEST_HANG_ENV = "AGENT_INFRA_TEST_HANG_FILE"


def _test_hang(path: str) -> None:
    try:
        with open(path) as handle:
            wanted = handle.read().strip()
    except OSError:
        return
    if wanted != str(os.getpid()):
        return
    log.warning("test_hang", file=path, pid=os.getpid())
    logs.flush()
    while True:  # blocks the loop itself: no more WATCHDOG=1, no RPCs
        time.sleep(3600)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text.isdigit() and int(pid_text) != os.getpid():
        return None
    return int(usec_text) / 1_000_000 / 2
