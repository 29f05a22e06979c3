"""Listen addresses as config accepts them (durations: test_runtime_parsing.py)."""

from __future__ import annotations

import pytest
from agent_infra.runtime.values import HostPort, parse_host_port


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
