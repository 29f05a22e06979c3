"""Log set-up: JSON lines, timestamps, flushes once per loop turn, reconfiguration."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
from agent_infra.runtime import logs


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed_text = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed_text = self.getvalue()

    def isatty(self) -> bool:
        return False


@pytest.fixture
def out() -> Iterator[CountingStream]:
    stream = CountingStream()
    logs.configure_logging("info", "json", stream=stream)
    try:
        yield stream
    finally:
        logs.bind_to_loop(None)
        logs.configure_logging("info", "json", stream=io.StringIO())


def lines(stream: CountingStream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_json_with_level_event_and_utc_microsecond_timestamp(
        out: CountingStream) -> None:
    before = time.time()
    logs.get_logger("test").info("something_happened", count=3, name="x")
    (line,) = lines(out)
    assert line["event"] == "something_happened" and line["level"] == "info"
    assert line["count"] == 3 and line["name"] == "x"
    stamp = str(line["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    parsed = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= parsed + float("0." + stamp[20:26]) <= time.time() + 1


def test_values_orjson_refuses_still_make_a_line(out: CountingStream) -> None:
    log = logs.get_logger("test")
    log.info("big", value=2**70)
    log.info("keys", mapping={1: "one", (2, 3): "tuple"})
    log.info("object", thing=object())
    big, keys, thing = lines(out)
    assert big["value"] == 2**70
    assert keys["mapping"] == repr({1: "one", (2, 3): "tuple"})
    assert str(thing["thing"]).startswith("<object object")


def test_without_a_loop_every_line_is_flushed_at_once(out: CountingStream) -> None:
    flushes_before = out.flushes
    log = logs.get_logger("test")
    log.info("one")
    log.info("two")
    assert out.flushes == flushes_before + 2


async def test_on_the_loop_lines_of_one_turn_leave_in_one_flush(out: CountingStream) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    flushes_before = out.flushes
    log = logs.get_logger("test")
    for number in range(5):
        log.info("line", number=number)
    assert out.flushes == flushes_before  # not yet: at the loop's next turn
    await asyncio.sleep(0)
    assert out.flushes == flushes_before + 1
    assert [line["number"] for line in lines(out)] == list(range(5))
    assert out.flushed_text == out.getvalue()


async def test_lines_from_another_thread_are_flushed_at_once(out: CountingStream) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    flushes_before = out.flushes
    thread = threading.Thread(target=lambda: logs.get_logger("test").info("from_thread"))
    thread.start()
    thread.join()
    assert out.flushes == flushes_before + 1


async def test_unbinding_flushes_what_is_pending(out: CountingStream) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    logs.get_logger("test").info("pending")
    logs.bind_to_loop(None)
    assert out.flushed_text == out.getvalue() != ""


def test_a_logger_made_before_reconfiguration_follows_the_new_level(
        out: CountingStream) -> None:
    log = logs.get_logger("test")
    log.info("kept")
    logs.configure_logging("warning", "json", stream=out)
    log.info("dropped")
    log.warning("kept_too")
    assert [line["event"] for line in lines(out)] == ["kept", "kept_too"]
