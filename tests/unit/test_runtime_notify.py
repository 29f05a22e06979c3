"""SystemdNotifier against a datagram socket, including the abstract namespace."""

from __future__ import annotations

import os
import socket
import uuid

from agent_infra.runtime.notify import SystemdNotifier


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready("x")
    assert notifier.watchdog_interval is None


def test_abstract_socket_and_message_format() -> None:
    name = f"agent-infra-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"


def test_watchdog_interval_is_half_of_usec_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(env).watchdog_interval == 2.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_a_vanished_socket_does_not_raise() -> None:
    SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"}).ready("x")
