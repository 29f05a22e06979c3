"""Issue 10, finding 11: numbers are ASCII digits in range, and no error message echoes
unbounded input."""

from __future__ import annotations

import pytest
from agent_infra.orchestrator.domain import _page_start
from agent_infra.orchestrator.executors.slurm.payload import parse_payload
from agent_infra.orchestrator.http_api import task_request
from agent_infra.runtime.errors import MAX_MESSAGE_CHARS, InvalidArgument, NotFound, shown
from agent_infra.runtime.parsing import INT64, load_json, parse_int


@pytest.mark.parametrize("text", ["²", "٣", "9" * 5000, "1.5", "", " ", "0x10", "1_000"])
def test_parse_int_refuses_what_is_not_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError, match="whole number") as info:
        parse_int(text, "n", *INT64)
    assert len(str(info.value)) < 300


def test_parse_int_ranges() -> None:
    assert parse_int(" 42 ", "n", 0, 100) == 42
    assert parse_int(-3, "n", -5, 0) == -3
    for bad in (True, 2**63, 101, 1.0):
        with pytest.raises(ValueError):
            parse_int(bad, "n", 0, 100)


@pytest.mark.parametrize("token", ["²", "٣", "9" * 5000, "-1", str(2**63)])
def test_page_tokens(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        _page_start(token)


def test_messages_are_capped() -> None:
    error = NotFound(f"workflow run {'9' * 5000!r} not found")
    assert len(str(error)) <= MAX_MESSAGE_CHARS
    assert len(shown("x" * 5000)) <= 200


def test_http_body_priority_past_int32() -> None:
    with pytest.raises(InvalidArgument, match="priority"):
        task_request({"id": "t", "payload": {}, "priority": 2**63})


def test_json_bodies_bounded() -> None:
    with pytest.raises(ValueError, match="limit is 64"):
        load_json("[" * 900 + "]" * 900, "body")
    with pytest.raises(ValueError, match="whole number"):
        load_json('{"a": ' + "9" * 5000 + "}", "body")


@pytest.mark.parametrize("gpus", ["²", "9" * 5000])
def test_slurm_gpus(gpus: str) -> None:
    with pytest.raises(InvalidArgument, match="gpus"):
        parse_payload({"command": "true", "gpus": gpus})


@pytest.mark.parametrize("key", ["env", "command"])
@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, '{"A": ' + "9" * 5000 + "}"])
def test_slurm_json_values_bounded(key: str, text: str) -> None:
    payload = {"command": "true", key: text}
    if key == "env":
        with pytest.raises(InvalidArgument, match=r"payload\.env"):
            parse_payload(payload)
    else:
        parse_payload(payload)  # not JSON this server reads: shell text, no crash


@pytest.mark.parametrize("key", ["command", "env"])
def test_env_manager_deep_json_is_invalid_argument(key: str) -> None:
    from agent_infra.env_manager.tasks.payload import parse_command, parse_env

    parse = parse_command if key == "command" else parse_env
    with pytest.raises(InvalidArgument, match=rf"payload\.{key}"):
        parse("[" * 5000 + "]" * 5000)
