"""Value types shared by both daemons' settings: durations and listen addresses.

Durations are written in config as seconds (a number) or as strings such as "500ms", "2m", "1d"
(parsed by .parsing, which the CLI shares);
addresses as "host:port" (IPv6 hosts in brackets). Both validate into plain Python values.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import BeforeValidator, PlainSerializer

from .parsing import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    """A listen address "host:port" with the port in 1-65535."""
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError("expected \"host:port\", e.g. \"127.0.0.1:50100\"")
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected \"host:port\", e.g. \"127.0.0.1:50100\"; got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return HostPort(host, port)


Address = Annotated[HostPort, BeforeValidator(parse_host_port), PlainSerializer(str)]
