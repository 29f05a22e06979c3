"""How a client reaches a daemon: addresses, TLS, token, channel options, retries, connecting.

Nothing here knows what the RPCs mean. A domain client (EnvManagerClient, ...) describes its
service with a `ServiceTarget` (where to dial by default, which methods are safe to retry) and
gets a ready `grpc.aio.Channel` from `connect()`.

grpc is untyped: channels, calls and interceptors are `Any` at these edges.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc

from .errors import InfraUnavailable

MIB = 1024 * 1024
# The daemons refuse pings more often than every 10 s when no data flows
# (grpc.http2.min_recv_ping_interval_without_data_ms in services/runtime/daemon.py).
MIN_KEEPALIVE_SECONDS = 10.0


@dataclass(frozen=True)
class Deadlines:
    """Default deadlines, in seconds, by kind of call. A call's own `timeout=` wins.

    Streams (StartServices, StreamHealth, StreamLogs, PullImages) have no default deadline: a
    health watch or a followed log is meant to run until the caller stops reading.
    """

    #: Snapshots: service status (it samples live container stats), resource availability.
    read: float = 30.0
    #: Stop and restart: grace periods of the containers and the health wait after a restart.
    #: A call's own timeout_seconds (grace) is added on top.
    control: float = 300.0
    #: ExecuteTask that leaves the task timeout to the workload class's default (unknown here).
    task: float = 3600.0
    #: Added to ExecuteTask's own timeout_seconds: container creation, output and removal.
    task_margin: float = 30.0

    def __post_init__(self) -> None:
        for name in ("read", "control", "task", "task_margin"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Deadlines.{name} must be positive; got {getattr(self, name)}")


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach a daemon; the same settings the daemons take for their side.

    Attributes:
        address: ``host:port`` (or any gRPC target such as ``unix:/path``). None: the service's
            environment variable (ENV_MANAGER_GRPC_ADDR, ORCHESTRATOR_GRPC_ADDR), read when the
            client is made, else its default port on 127.0.0.1.
        tls: use TLS. Setting ca_file or cert_file turns it on too.
        ca_file: PEM bundle that signed the server's certificate (None: the system's roots).
        cert_file, key_file: this client's certificate and key, for daemons that require mutual
            TLS (their ``tls.client_ca_file``); set both or neither.
        server_name: the name to verify the server certificate against, when it differs from
            the host in `address`.
        token, token_file: the bearer token the daemon expects (its ``auth.token`` or
            ``auth.token_file``), sent as ``authorization: Bearer <token>`` on every call.
        connect_timeout: seconds to wait for a connection before raising InfraUnavailable.
        deadlines: default per-call deadlines.
        max_message_bytes: largest message sent or accepted.
        keepalive_time, keepalive_timeout: ping an idle connection every keepalive_time seconds
            and drop it when no answer comes within keepalive_timeout, so a long quiet stream
            notices a dead peer.
    """

    address: str | None = None
    tls: bool = False
    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: Path | str | None = None
    connect_timeout: float = 5.0
    deadlines: Deadlines = field(default_factory=Deadlines)
    max_message_bytes: int = 64 * MIB
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together (mutual TLS)")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive; got {self.connect_timeout}")
        if self.keepalive_time < MIN_KEEPALIVE_SECONDS:
            raise ValueError(f"keepalive_time must be at least {MIN_KEEPALIVE_SECONDS:g} s (the "
                             f"daemons reject faster pings); got {self.keepalive_time}")
        if self.keepalive_timeout <= 0:
            raise ValueError(f"keepalive_timeout must be positive; got {self.keepalive_timeout}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024; "
                             f"got {self.max_message_bytes}")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def resolve_token(self) -> str | None:
        """The token to send, read from token_file when that is how it was given."""
        if self.token is not None:
            return self.token.strip()
        if self.token_file is not None:
            return Path(self.token_file).read_text().strip() or None
        return None


@dataclass(frozen=True)
class ServiceTarget:
    """What the transport needs to know about one gRPC service."""

    #: Name people know the daemon by, used in error messages ("env-manager").
    display_name: str
    #: Full gRPC service name ("env_manager.v1.EnvManagerService").
    grpc_service: str
    address_env: str
    default_address: str
    #: Methods that may be sent again after UNAVAILABLE: doing them twice has the same effect
    #: as once. gRPC retries a stream only until its first response has arrived.
    retryable_methods: Sequence[str]

    def method_path(self, method: str) -> str:
        return f"/{self.grpc_service}/{method}"


def resolve_address(explicit: str | None, config: ConnectionConfig, target: ServiceTarget) -> str:
    """The argument, else config.address, else the service's env variable, else its default."""
    for candidate in (explicit, config.address, os.environ.get(target.address_env)):
        if candidate and candidate.strip():
            return candidate.strip()
    return target.default_address


# Backoff per attempt is random in [0, min(initial * 2^n, max)]: five attempts span about two
# seconds on average, long enough to ride over a daemon restart, short enough not to hide an
# outage. Throttling (per channel): each failed attempt costs a token, each success returns 0.1,
# and retries stop while fewer than half the tokens are left, so after about 25 failed attempts
# in a row a down daemon is not hammered any more until calls succeed again.
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.25s",
    "maxBackoff": "4s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
RETRY_THROTTLING = {"maxTokens": 50, "tokenRatio": 0.1}


def service_config(target: ServiceTarget) -> str:
    """gRPC service config (JSON): retries on UNAVAILABLE for the retryable methods only."""
    config: dict[str, Any] = {"retryThrottling": RETRY_THROTTLING}
    if target.retryable_methods:
        config["methodConfig"] = [{
            "name": [{"service": target.grpc_service, "method": method}
                     for method in target.retryable_methods],
            "retryPolicy": RETRY_POLICY,
        }]
    return json.dumps(config)


def channel_options(config: ConnectionConfig, target: ServiceTarget) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.primary_user_agent", f"agent-infra-client/{_version()}"),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        # A channel held open between calls (an orchestrator's) learns of a dead peer too.
        ("grpc.keepalive_permit_without_calls", 1),
        # The default stops pinging after 2 pings with no data: a quiet health or log stream
        # would then never notice a vanished server.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(target)),
        # Our retry policy, not one a DNS TXT record might carry.
        ("grpc.service_config_disable_resolution", 1),
        # Reconnect soon after a daemon restart: the default backoff grows to 120 s, during
        # which every call fails at once with UNAVAILABLE.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


def _version() -> str:
    try:
        return metadata.version("agent-infra")
    except metadata.PackageNotFoundError:
        return "dev"


# --- bearer token --------------------------------------------------------------------------------
# An interceptor rather than call credentials: grpc only sends call credentials over TLS, and
# the daemons accept a token on plaintext loopback too.


def _with_token(details: Any, header: str) -> Any:
    extra = ("authorization", header)
    metadata_ = grpc.aio.Metadata(*(details.metadata or ()), extra)
    return details._replace(metadata=metadata_)


class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._header), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(_with_token(details, self._header), request_iterator)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self._header = header

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(_with_token(details, self._header), request_iterator)


def token_interceptors(token: str) -> list[Any]:
    header = f"Bearer {token}"
    return [_TokenUnaryUnary(header), _TokenUnaryStream(header), _TokenStreamUnary(header),
            _TokenStreamStream(header)]


# --- channels ----------------------------------------------------------------------------------


def _read(path: Path | str | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def create_channel(address: str, config: ConnectionConfig, target: ServiceTarget) -> Any:
    """A `grpc.aio.Channel` to `address`, not yet connected. Call from inside the event loop."""
    options = channel_options(config, target)
    token = config.resolve_token()
    # No token, no interceptor: interceptors cost an extra task per call in grpc.aio.
    interceptors = token_interceptors(token) if token else None
    if config.uses_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.ca_file),
            private_key=_read(config.key_file),
            certificate_chain=_read(config.cert_file),
        )
        return grpc.aio.secure_channel(address, credentials, options=options,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


async def connect(address: str, config: ConnectionConfig, target: ServiceTarget) -> Any:
    """A channel that is READY, or InfraUnavailable naming the address after connect_timeout."""
    channel = create_channel(address, config, target)
    try:
        async with asyncio.timeout(config.connect_timeout):
            await channel.channel_ready()
    except TimeoutError:
        state = channel.get_state(try_to_connect=False)
        await channel.close()
        hint = ("is it running, and do its TLS settings match this client's?"
                if config.uses_tls else "is it running, and is TLS off on both sides?")
        raise InfraUnavailable(
            f"could not connect to {target.display_name} at {address} within "
            f"{config.connect_timeout:g} s (channel {state.name}): {hint}",
            address=address,
        ) from None
    except BaseException:
        await channel.close()
        raise
    return channel
