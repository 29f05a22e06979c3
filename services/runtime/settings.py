"""Settings every daemon has: listen addresses, shutdown, transport limits, logging, TLS and auth.

Each daemon subclasses `DaemonSettings` to add its own keys. Models forbid unknown keys so a typo in
a TOML file stops the daemon instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from .config import Option
from .values import Address, Duration


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    grpc_addr: Address
    http_addr: Address
    shutdown_grace: Duration = Field(10.0, description="how long in-flight RPCs may take to finish")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    keepalive_time: Duration = Field(30.0, gt=0)
    keepalive_timeout: Duration = Field(10.0, gt=0)
    # The HTTP listener, against slow or idle clients holding connections (slowloris): a
    # request's line and headers must arrive within the header timeout (counted from the
    # connection, or from a kept-alive connection's first byte of the next request); a
    # kept-alive connection with no request is closed after the idle timeout; a handler,
    # body reading included, gets the request timeout. Connections beyond the limit are closed
    # at once, the oldest one waiting for a request (idle or half sent) giving way first.
    http_header_timeout: Duration = Field(10.0, gt=0)
    http_idle_timeout: Duration = Field(60.0, gt=0)
    http_request_timeout: Duration = Field(60.0, gt=0)
    http_max_connections: int = Field(256, ge=1, le=65536)
    # Without TLS, an HTTP listener whose routes change state (the orchestrator's
    # POST /queue/submit) listens on loopback only unless this says the operator accepts
    # plaintext on the network (a proxy terminating TLS in front of it, say).
    http_allow_plaintext: bool = False


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class TlsSettings(Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    # Setting a client CA turns on mutual TLS: clients must present a certificate it signed.
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        for path in (self.cert_file, self.key_file, self.client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class AuthSettings(Section):
    token: SecretStr | None = None
    token_file: Path | None = None
    # Probes (systemd, load balancers, grpc_health_probe) usually carry no token: with a token
    # set, grpc.health.v1 stays open and HTTP /health answers its status (code and
    # {"status": ...}) without one; the detail (reason, dependencies, version) needs the token.
    health_open: bool = True
    # With a token set, /metrics needs it too unless this opens it (Prometheus can send one).
    metrics_open: bool = False
    # The token, read once when the settings are validated: a file that is empty, blank or
    # unreadable is a configuration error, never "no token" (which would turn auth off).
    _token: str | None = PrivateAttr(default=None)

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("token must not be empty or blank: it would turn authentication off")
        return value

    @field_validator("token_file")
    @classmethod
    def _token_file_not_blank(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_token_file(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token is not None:
            self._token = self.token.get_secret_value().strip()
        elif self.token_file is not None:
            self._token = _read_token_file(self.token_file)
        return self

    def resolve_token(self) -> str | None:
        """The token clients must send; None when authentication is off."""
        return self._token


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not token:
        raise ValueError(
            f"{path} is empty or blank: it would turn authentication off; put the token in it, "
            "or unset auth.token_file to run without authentication")
    return token


class DaemonSettings(Section):
    server: ServerSettings
    log: LogSettings = LogSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()


def common_options(prefix: str, http_addr_env: str) -> list[Option]:
    """The environment variables and flags every daemon accepts, under its own prefix."""
    return [
        Option("server.grpc_addr", "gRPC listen address host:port", f"{prefix}_GRPC_ADDR",
               "--grpc-addr"),
        Option("server.http_addr", "HTTP (/metrics, /health) listen address host:port",
               http_addr_env, "--http-addr"),
        Option("server.shutdown_grace", "time in-flight RPCs get to finish on SIGTERM",
               f"{prefix}_SHUTDOWN_GRACE", "--shutdown-grace"),
        Option("server.max_message_bytes", "largest message accepted or sent",
               f"{prefix}_MAX_MESSAGE_BYTES", "--max-message-bytes"),
        Option("log.level", "debug, info, warning or error", f"{prefix}_LOG_LEVEL", "--log-level"),
        Option("log.format", "auto (console on a terminal, else JSON), json or console",
               f"{prefix}_LOG_FORMAT", "--log-format"),
        Option("tls.cert_file", "server certificate (PEM); turns TLS on", f"{prefix}_TLS_CERT",
               "--tls-cert"),
        Option("tls.key_file", "server private key (PEM)", f"{prefix}_TLS_KEY", "--tls-key"),
        Option("tls.client_ca_file", "CA (PEM) that signs client certificates; turns mutual TLS on",
               f"{prefix}_TLS_CLIENT_CA", "--tls-client-ca"),
        Option("auth.token", "bearer token clients must send", f"{prefix}_AUTH_TOKEN"),
        Option("auth.token_file", "file holding the bearer token", f"{prefix}_AUTH_TOKEN_FILE",
               "--auth-token-file"),
    ]
