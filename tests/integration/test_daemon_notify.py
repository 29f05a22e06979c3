"""The systemd notify protocol on a real datagram socket bound by the test."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.daemon_support import running_daemon, start_daemon


@pytest.mark.parametrize("name", ["env-manager", "orchestrator"])
async def test_ready_status_and_stopping(tmp_path: Path, name: str) -> None:
    daemon = await start_daemon(name, tmp_path)
    try:
        ready = await daemon.notify.wait_for("READY")
        assert daemon.grpc_addr in ready["STATUS"]
        statuses = [m["STATUS"] for m in daemon.notify.messages if "STATUS" in m]
        assert statuses[0] == "starting"
        daemon.signal(signal.SIGTERM)
        await daemon.notify.wait_for("STOPPING")
        assert await daemon.wait_exit() == 0
    finally:
        await daemon.stop()
        daemon.notify.close()


async def test_watchdog_pings_when_asked(tmp_path: Path) -> None:
    async with running_daemon("env-manager", tmp_path, env={"WATCHDOG_USEC": "200000"}) as daemon:
        for _ in range(3):
            daemon.notify.messages.clear()
            await daemon.notify.wait_for("WATCHDOG", timeout=10)


async def test_no_watchdog_pings_for_another_pid(tmp_path: Path) -> None:
    env = {"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    async with running_daemon("orchestrator", tmp_path, env=env) as daemon:
        daemon.signal(signal.SIGTERM)
        await daemon.notify.wait_for("STOPPING")
        assert await daemon.wait_exit() == 0
    assert not [m for m in daemon.notify.messages if "WATCHDOG" in m]
