"""The daemon harness survives the race free_port() leaves open: a port picked free and taken
by another process before the daemon binds it (seen in CI: 'address already in use')."""

from __future__ import annotations

import socket
from pathlib import Path
from unittest import mock

from tests import daemon_support
from tests.daemon_support import running_daemon


async def test_a_port_taken_before_the_daemon_binds_it_is_replaced(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = int(holder.getsockname()[1])
        picks = iter([taken])
        real_free_port = daemon_support.free_port

        def free_port() -> int:  # the first pick is the taken port, then real ones
            return next(picks, 0) or real_free_port()

        with mock.patch.object(daemon_support, "free_port", free_port):
            async with running_daemon("orchestrator", tmp_path) as daemon:
                assert taken not in (daemon.grpc_port, daemon.http_port)
