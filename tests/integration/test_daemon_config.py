"""A bad configuration stops the daemon at start with exit code 2 and names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon_support import log_events, log_records, run_to_exit, running_daemon


@pytest.mark.parametrize(("name", "toml", "env", "expected"), [
    ("env-manager", None, {"ENV_MANAGER_CONFIG": "/nonexistent/env-manager.toml"},
     ["config file not found", "/nonexistent/env-manager.toml", "ENV_MANAGER_CONFIG"]),
    ("orchestrator", "[server\ngrpc_addr = 1", {}, ["not valid TOML", "line 1"]),
    ("env-manager", '[server]\ngrpc_adr = "127.0.0.1:1"\n', {},
     ["server.grpc_adr", "unknown key"]),
    ("env-manager", '[stack]\nmax_concurrent = "five"\n', {},
     ["stack.max_concurrent", "'five'", "integer"]),
    ("orchestrator", '[server]\nshutdown_grace = "soon"\n', {},
     ["server.shutdown_grace", "'soon'", "duration"]),
    ("orchestrator", '[server]\ngrpc_addr = "127.0.0.1:70000"\n', {},
     ["server.grpc_addr", "127.0.0.1:70000", "out of range 1-65535"]),
    ("env-manager", None, {"ENV_MANAGER_METRICS_ADDR": "127.0.0.1:0"},
     ["server.http_addr", "env ENV_MANAGER_METRICS_ADDR", "out of range"]),
    ("env-manager", None, {"ENV_MANAGER_MAX_CONCURRENT": "0"},
     ["stack.max_concurrent", "env ENV_MANAGER_MAX_CONCURRENT", "greater than or equal to 1"]),
    ("orchestrator", '[log]\nlevel = "loud"\n', {}, ["log.level", "'loud'"]),
    ("env-manager", '[tls]\ncert_file = "/nonexistent/cert.pem"\n', {},
     ["tls", "cert_file and key_file must be set together"]),
])
async def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, name: str, toml: str | None, env: dict[str, str], expected: list[str]
) -> None:
    args: list[str] = []
    if toml is not None:
        path = tmp_path / "config.toml"
        path.write_text(toml)
        args = ["--config", str(path)]
    code, output = await run_to_exit(name, args, env)
    assert code == 2, output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


async def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    code, output = await run_to_exit("orchestrator", ["--grpc-addr", "nowhere"])
    assert code == 2
    assert "server.grpc_addr" in output and "flag --grpc-addr" in output


async def test_unknown_flag_is_a_usage_error() -> None:
    code, output = await run_to_exit("env-manager", ["--no-such-flag"])
    assert code == 2
    assert "unrecognized arguments: --no-such-flag" in output


async def test_port_in_use_fails_start_clearly(tmp_path: Path) -> None:
    async with running_daemon("orchestrator", tmp_path) as first:
        code, output = await run_to_exit("orchestrator", ["--grpc-addr", first.grpc_addr])
    assert code == 1
    assert f"cannot listen on gRPC {first.grpc_addr}" in output


async def test_layers_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[server]\nshutdown_grace = "7s"\n[log]\nlevel = "error"\n')
    env = {"ORCHESTRATOR_CONFIG": str(config), "ORCHESTRATOR_LOG_LEVEL": "warning"}
    # The flag (info) beats the env (warning), which beats the file (error): with "info" the
    # daemon logs its "started" line, which neither "warning" nor "error" would.
    async with running_daemon("orchestrator", tmp_path, env=env,
                              args=["--log-level", "info"]) as daemon:
        pass
    assert "started" in log_events(daemon.log_text())
    assert any(record.get("grace_seconds") == 7.0 for record in log_records(daemon.log_text()))
