"""The console's sessions and CSRF tokens (console/access.py) and its stream's bounded queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from unittest import mock

from agent_infra.orchestrator.console import access as access_module
from agent_infra.orchestrator.console.access import COOKIE, Access, safe_next, same_origin
from agent_infra.orchestrator.console.stream import QUEUE_SIZE, _message, _pump
from agent_infra.orchestrator.model import Event
from aiohttp import web
from aiohttp.test_utils import make_mocked_request


def request(cookie: str = "", **headers: str) -> web.Request:
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return make_mocked_request("POST", "/console/tasks/x/cancel", headers=headers)


def test_a_session_is_bound_to_the_token_and_never_holds_it() -> None:
    token = ["first-token"]
    access = Access(lambda: token[0], lambda header: header == f"Bearer {token[0]}")
    value = access.new_session()
    assert "first-token" not in value
    nonce = access.session(request(value))
    assert nonce is not None
    presented = request(value, **{"X-CSRF-Token": access.csrf_token(nonce)})
    assert access.csrf_ok(presented, nonce, None)
    assert not access.csrf_ok(request(value, **{"X-CSRF-Token": "0" * 64}), nonce, None)
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert access.session(request(forged)) is None
    token[0] = "second-token"  # a new token ends every session
    assert access.session(request(value)) is None


def test_a_session_expires() -> None:
    access = Access(lambda: "t", lambda header: False)
    value = access.new_session()
    later = time.time() + access_module.SESSION_SECONDS + 1
    with mock.patch("time.time", return_value=later):
        assert access.session(request(value)) is None


def test_without_a_token_the_bearer_header_waives_nothing() -> None:
    access = Access(lambda: None, lambda header: True)
    assert not access.bearer_ok(request(Authorization="Bearer anything"))


def test_login_goes_back_only_to_a_console_page() -> None:
    assert safe_next("/console/tasks?status=failed") == "/console/tasks?status=failed"
    for hostile in ("https://evil.example/", "//evil.example/console", "/console/..\\x", "",
                    None, "/queue/status"):
        assert safe_next(hostile) == "/console/"


async def test_a_subscriber_that_falls_a_queue_behind_is_told_to_reconnect() -> None:
    async def events() -> AsyncIterator[Event]:
        for seq in range(1, QUEUE_SIZE + 10):
            yield Event(seq, "task_submitted", f"t{seq}", {}, 1.0)

    queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_SIZE)
    assert await _pump(events(), queue, after=0) is True
    assert queue.qsize() == QUEUE_SIZE  # bounded: the rest is replayed after the reconnect

    replay: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_SIZE)
    assert await _pump(events(), replay, after=QUEUE_SIZE) is False  # up to `after` skipped
    first = replay.get_nowait()
    assert first is not None and first.seq == QUEUE_SIZE + 1


def test_a_message_is_one_sse_event_named_by_its_type() -> None:
    text = _message(Event(7, "task_failed", "t-1", {"error": "a\nb"}, 2.5)).decode()
    lines = text.split("\n")
    assert lines[:2] == ["id: 7", "event: task_failed"]
    assert lines[2].startswith("data: {") and text.endswith("\n\n") and text.count("\n") == 4


def test_a_change_must_come_from_this_site() -> None:
    def origin(**headers: str) -> bool:
        return same_origin(make_mocked_request("POST", "/", headers={"Host": "127.0.0.1:9097",
                                                                     **headers}))

    assert origin()  # no Origin: not a browser (the CSRF token still has to match)
    assert origin(Origin="http://127.0.0.1:9097")
    assert origin(Origin="https://127.0.0.1:9097")  # TLS ended by a proxy in front
    assert not origin(Origin="http://evil.example")
    assert not origin(Origin="http://127.0.0.1:9098")
    assert not origin(Origin="null")
    assert not origin(**{"Sec-Fetch-Site": "cross-site"})
    assert not origin(**{"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9097"})
