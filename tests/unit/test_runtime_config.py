"""Layered config loading, tested on the loader directly."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_infra.env_manager.settings import SPEC, EnvManagerSettings
from agent_infra.runtime import ConfigError
from agent_infra.runtime.config import build_arg_parser, load_config


def load(argv: list[str], environ: dict[str, str]) -> EnvManagerSettings:
    args = build_arg_parser(SPEC).parse_args(argv)
    return load_config(SPEC, args, environ).settings


def test_defaults_are_loopback_and_original_ports() -> None:
    settings = load([], {})
    assert str(settings.server.grpc_addr) == "127.0.0.1:50100"
    assert str(settings.server.http_addr) == "127.0.0.1:50101"
    assert settings.stack.max_concurrent == 5
    assert settings.stack.health_timeout == 60.0


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\ngrpc_addr = "127.0.0.1:1111"\nshutdown_grace = "3s"\n'
                      '[stack]\nmax_concurrent = 7\n')
    env = {"ENV_MANAGER_CONFIG": str(config), "ENV_MANAGER_GRPC_ADDR": "127.0.0.1:2222",
           "ENV_MANAGER_MAX_CONCURRENT": "9"}
    settings = load(["--grpc-addr", "127.0.0.1:3333"], env)
    assert settings.server.grpc_addr.port == 3333
    assert settings.stack.max_concurrent == 9
    assert settings.server.shutdown_grace == 3.0
    # a section from the file does not wipe the defaults of its other keys
    assert settings.server.http_addr.port == 50101


def test_original_env_names() -> None:
    settings = load([], {"ENV_MANAGER_METRICS_ADDR": "0.0.0.0:9000",
                         "ENV_MANAGER_HEALTH_TIMEOUT": "90s", "DOCKER_HOST": "tcp://h:2375",
                         "ENV_MANAGER_VERBOSE": "true"})
    assert str(settings.server.http_addr) == "0.0.0.0:9000"
    assert settings.stack.health_timeout == 90.0
    assert settings.docker.host == "tcp://h:2375"
    assert settings.log.level == "debug"


def test_log_level_variable_beats_verbose() -> None:
    settings = load([], {"ENV_MANAGER_VERBOSE": "1", "ENV_MANAGER_LOG_LEVEL": "warning"})
    assert settings.log.level == "warning"


def test_errors_name_every_bad_key_with_its_source(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[stack]\nmax_concurrent = "x"\nmystery = 1\n')
    with pytest.raises(ConfigError) as error:
        load(["--config", str(config)], {"ENV_MANAGER_GRPC_ADDR": "nope"})
    message = str(error.value)
    assert f"stack.max_concurrent = 'x' (from file {config})" in message
    assert f"stack.mystery: unknown key (from file {config})" in message
    assert "server.grpc_addr = 'nope' (from env ENV_MANAGER_GRPC_ADDR)" in message


def test_token_sources_are_exclusive(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc")
    with pytest.raises(ConfigError, match="set token or token_file, not both"):
        load(["--auth-token-file", str(token)], {"ENV_MANAGER_AUTH_TOKEN": "abc"})
    assert load(["--auth-token-file", str(token)], {}).auth.resolve_token() == "abc"
