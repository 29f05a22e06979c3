"""Log set-up: JSON lines, timestamps, one write per loop turn, library records, reconfiguration."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import structlog
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


# --- write() calls, whatever the stream's buffering ----------------------------------------------


class CountingRaw(io.RawIOBase):
    """A file that counts the write() calls it gets (each would be one syscall)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


@pytest.fixture
def unbuffered() -> Iterator[CountingRaw]:
    """Our logging on a stream like stdout under PYTHONUNBUFFERED=1: a text layer that writes
    through to the file at every write() call."""
    raw = CountingRaw()
    # (typeshed wants a buffered file under TextIOWrapper; under -u CPython gives it a raw one)
    text = io.TextIOWrapper(cast(Any, raw), write_through=True)
    logs.configure_logging("info", "json", stream=text)
    try:
        yield raw
    finally:
        logs.bind_to_loop(None)
        logs.configure_logging("info", "json", stream=io.StringIO())


def test_pythonunbuffered_makes_stdout_write_through_to_the_file() -> None:
    code = "import sys; print(type(sys.stdout.buffer).__name__, sys.stdout.write_through)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True, timeout=60)
    assert result.stdout.split() == ["FileIO", "True"]


async def test_a_turn_of_lines_is_one_write_under_pythonunbuffered(
        unbuffered: CountingRaw) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    log = logs.get_logger("test")
    for number in range(200):
        log.info("line", number=number)
    assert unbuffered.writes == []
    await asyncio.sleep(0)
    (written,) = unbuffered.writes
    assert [json.loads(line)["number"] for line in written.decode().splitlines()] == list(
        range(200))


async def test_the_lines_that_wait_are_bounded(unbuffered: CountingRaw) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    log = logs.get_logger("test")
    for number in range(1000):
        log.info("line", number=number, padding="x" * 200)
    await asyncio.sleep(0)
    text = b"".join(unbuffered.writes).decode()
    assert [json.loads(line)["number"] for line in text.splitlines()] == list(range(1000))
    longest = max(len(line) + 1 for line in text.splitlines())
    assert all(len(chunk) < logs.MAX_PENDING_CHARS + longest for chunk in unbuffered.writes)
    assert len(unbuffered.writes) <= len(text) // logs.MAX_PENDING_CHARS + 1


def test_flush_writes_what_waits(unbuffered: CountingRaw) -> None:
    loop = asyncio.new_event_loop()
    try:
        logs.bind_to_loop(loop)
        logs.get_logger("test").warning("last_words")
        assert unbuffered.writes == []
        logs.flush()
        (written,) = unbuffered.writes
        assert json.loads(written)["event"] == "last_words"
    finally:
        logs.bind_to_loop(None)
        loop.close()


# --- the standard library's records ---------------------------------------------------------------


def test_library_records_are_json_lines_on_our_stream(out: CountingStream) -> None:
    library = logging.getLogger("aiohttp.server")
    library.info("dropped: libraries log warnings and up")
    try:
        raise ValueError("bad request")
    except ValueError:
        library.exception("Error handling request from %s", "127.0.0.1")
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.warning("careful")
    error, warning = lines(out)
    assert error["event"] == "Error handling request from 127.0.0.1"
    assert error["logger"] == "aiohttp.server" and error["level"] == "error"
    assert "ValueError: bad request" in str(error["exception"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(error["timestamp"]))
    assert warning["logger"] == "py.warnings" and warning["level"] == "warning"


async def test_library_records_on_the_loop_share_its_write(unbuffered: CountingRaw) -> None:
    logs.bind_to_loop(asyncio.get_running_loop())
    logs.get_logger("test").info("ours")
    logging.getLogger("asyncio").error("theirs")
    await asyncio.sleep(0)
    (written,) = unbuffered.writes
    assert [json.loads(line)["event"] for line in written.decode().splitlines()] == [
        "ours", "theirs"]


def test_repeated_errors_are_rate_limited_and_counted(out: CountingStream) -> None:
    ours = logs.get_logger("test")
    library = logging.getLogger("asyncio")
    for _ in range(50):
        ours.error("repeated_failure_ours", detail="same")
        library.error("socket.accept() out of system resource (test %d)", 1)
        ours.info("not_limited")  # info lines (every RPC's) are never dropped
    logs.flush()
    written = lines(out)
    events = [str(line["event"]) for line in written]
    assert events.count("repeated_failure_ours") == logs.REPEAT_BURST
    assert events.count("socket.accept() out of system resource (test 1)") == logs.REPEAT_BURST
    assert events.count("not_limited") == 50
    reports = {str(line["similar_event"]): line for line in written
               if line["event"] == logs.SUPPRESSED_EVENT}
    ours_report = reports["repeated_failure_ours"]
    assert ours_report["count"] == 50 - logs.REPEAT_BURST
    assert ours_report["message"] == f"{50 - logs.REPEAT_BURST} similar lines suppressed"
    library_report = reports["socket.accept() out of system resource (test 1)"]
    assert library_report["count"] == 50 - logs.REPEAT_BURST
    assert library_report["similar_logger"] == "asyncio"


def test_the_repeat_bucket_refills_with_time() -> None:
    now = [0.0]
    limiter = logs._RepeatLimiter(burst=2, per_second=1.0, clock=lambda: now[0])

    def passes(event: str = "boom", level: str = "error") -> bool:
        try:
            limiter(None, level, {"event": event, "level": level})
        except structlog.DropEvent:
            return False
        return True

    assert [passes() for _ in range(3)] == [True, True, False]
    assert passes("other")  # each message has its own bucket
    assert passes("boom", "info")  # below warning: never limited
    now[0] += 1.0
    assert [passes() for _ in range(2)] == [True, False]
