"""Durations and listen addresses as config accepts them."""

from __future__ import annotations

import pytest
from agent_infra.runtime.values import HostPort, parse_duration, parse_host_port


@pytest.mark.parametrize(("text", "seconds"), [
    (30, 30.0), (1.5, 1.5), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5),
    (" 10 ", 10.0), ("0", 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", -1, "5 days", True, None, "1.2.3s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:50100", HostPort("127.0.0.1", 50100)),
    ("0.0.0.0:1", HostPort("0.0.0.0", 1)),
    ("[::1]:9097", HostPort("::1", 9097)),
    ("localhost:65535", HostPort("localhost", 65535)),
])
def test_addresses(text: str, address: HostPort) -> None:
    assert parse_host_port(text) == address
    assert parse_host_port(str(address)) == address


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1", "host:port"), ("127.0.0.1:0", "out of range"),
    ("127.0.0.1:70000", "out of range"), (":80", "host:port"), ("host:http", "host:port"),
    (50100, "host:port"),
])
def test_bad_addresses(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_port(text)
