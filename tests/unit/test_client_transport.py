"""The client's transport settings: address resolution, config checks, the retry policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_infra.client import ConnectionConfig, Deadlines, EnvManagerClient
from agent_infra.client._transport import channel_options, service_config
from agent_infra.client.env_manager import ENV_MANAGER


def test_address_argument_then_config_then_env_then_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENV_MANAGER_GRPC_ADDR", raising=False)
    assert EnvManagerClient().address == "127.0.0.1:50100"
    monkeypatch.setenv("ENV_MANAGER_GRPC_ADDR", "10.0.0.5:6000")
    # Read when the client is made, not when the module was imported.
    assert EnvManagerClient().address == "10.0.0.5:6000"
    assert EnvManagerClient(config=ConnectionConfig(address="h:1")).address == "h:1"
    assert EnvManagerClient("h:2", config=ConnectionConfig(address="h:1")).address == "h:2"


def test_retry_policy_names_only_idempotent_methods() -> None:
    config = json.loads(service_config(ENV_MANAGER))
    (method_config,) = config["methodConfig"]
    names = {entry["method"] for entry in method_config["name"]}
    assert names == {"GetServicesStatus", "GetResourceAvailability", "StreamHealth", "StreamLogs",
                     "PullImages", "StopServices", "ExecuteTask", "CancelTask",
                     # sandbox calls whose repeat does no more; not CreateSandbox, SandboxExec
                     "ListSandboxes", "GetFile", "PutFile", "DeleteSandbox"}
    assert {entry["service"] for entry in method_config["name"]} == {
        "env_manager.v1.EnvManagerService"}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryThrottling"]["maxTokens"] > 0


def test_keepalive_respects_the_daemons_minimum() -> None:
    options = dict(channel_options(ConnectionConfig(), ENV_MANAGER))
    assert options["grpc.keepalive_time_ms"] >= 10_000
    assert options["grpc.http2.max_pings_without_data"] == 0
    with pytest.raises(ValueError, match="keepalive_time must be at least 10"):
        ConnectionConfig(keepalive_time=5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cert_file": "c.pem"}, "cert_file and key_file must be set together"),
    ({"token": "a", "token_file": "f"}, "set token or token_file"),
    ({"token": "  "}, "token must not be empty"),
    ({"connect_timeout": 0}, "connect_timeout must be positive"),
])
def test_bad_config_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionConfig(**kwargs)  # type: ignore[arg-type]


def test_deadlines_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Deadlines\.read must be positive"):
        Deadlines(read=0)


def test_tls_follows_from_certificate_files(tmp_path: Path) -> None:
    assert not ConnectionConfig().uses_tls
    assert ConnectionConfig(tls=True).uses_tls
    assert ConnectionConfig(ca_file=tmp_path / "ca.pem").uses_tls


def test_token_from_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert ConnectionConfig(token_file=token_file).resolve_token() == "s3cret"
    assert "s3cret" not in repr(ConnectionConfig(token="s3cret"))
