"""One parser for durations and one set of yes-words: daemon config, payloads and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from agent_infra.client.cli_common import UsageError, parse_since
from agent_infra.env_manager.settings import SPEC
from agent_infra.runtime.config import build_arg_parser, load_config
from agent_infra.runtime.parsing import TRUTHY, parse_duration, truthy

# What the daemon config took before, and what the CLI's --since took: both take all of them.
FORMS = [
    (30, 30.0), (1.5, 1.5), ("30", 30.0), (" 10 ", 10.0), ("500ms", 0.5), ("1.5s", 1.5),
    ("10 s", 10.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("1w", 604800.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("10M", 600.0), ("90S", 90.0),
]


@pytest.mark.parametrize(("text", "seconds"), FORMS)
def test_every_form_parses_the_same_everywhere(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
    if isinstance(text, str) and not text.strip().replace(".", "").isdigit():
        # the CLI: a duration in --since means that long ago
        assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - seconds


@pytest.mark.parametrize("text", ["soon", "-1", -1, "5 days", True, None, "1.2.3s", "", "m",
                                  "1x", "h1"])
def test_what_is_no_duration_is_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_daemon_config_takes_days(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[tasks]\nretention = "1d"\n[server]\nshutdown_grace = "1m30s"\n')
    args = build_arg_parser(SPEC).parse_args(["--config", str(config)])
    settings = load_config(SPEC, args, {}).settings
    assert settings.tasks.retention == 86400.0
    assert settings.server.shutdown_grace == 90.0


def test_cli_since_still_refuses_what_is_no_time() -> None:
    with pytest.raises(UsageError):
        parse_since("the day before")


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "On", "on"])
def test_yes_words(text: str) -> None:
    assert truthy(text)


@pytest.mark.parametrize("text", ["", "0", "false", "no", "off", "enabled", "y"])
def test_other_words_are_no(text: str) -> None:
    assert not truthy(text)


def test_one_set_of_yes_words() -> None:
    assert frozenset({"1", "true", "yes", "on"}) == TRUTHY


def test_the_cli_loads_none_of_the_daemon_dependencies() -> None:
    heavy = ["aiohttp", "structlog", "prometheus_client", "pydantic", "orjson",
             "agent_infra.runtime.daemon", "agent_infra.runtime.values"]
    code = ("import sys, agent_infra.client.cli, agent_infra.client.cli_common; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"
