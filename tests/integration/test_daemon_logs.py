"""A real daemon's log stream in JSON mode: every line it writes, on stdout and stderr, is one JSON
object, the standard library's records (aiohttp, asyncio, warnings) included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.daemon_support import DaemonProcess, start_daemon

NOISE = "/agent_infra.test.Slow/Noise"
# A header line with no colon: aiohttp refuses the request and logs the error with a traceback.
MALFORMED_REQUEST = b"GET /health HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n"


def every_line_as_json(text: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text}") from None
        assert isinstance(record, dict), f"line {number} is not an object: {line!r}"
        records.append(record)
    return records


async def _send_malformed_http(daemon: DaemonProcess) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
    try:
        writer.write(MALFORMED_REQUEST)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)  # the server answers 400 and closes
    finally:
        writer.close()


async def test_library_records_are_json_lines_on_the_daemon_stream(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.log"
    daemon = await start_daemon("slow", tmp_path, stderr=stderr_path)
    channel = daemon.channel()
    try:
        answer = await _send_malformed_http(daemon)
        assert answer.split(b" ", 2)[1] == b"400", answer
        assert await channel.unary_unary(NOISE)(b"x", timeout=30) == b"x"
    finally:
        await channel.close()
        assert await daemon.stop() == 0
        daemon.notify.close()

    stdout_records = every_line_as_json(daemon.log_text())
    every_line_as_json(stderr_path.read_text())
    by_logger = {record.get("logger"): record for record in stdout_records}
    aiohttp_record = by_logger["aiohttp.server"]
    assert aiohttp_record["level"] == "error"
    assert aiohttp_record["event"].startswith("Error handling request")
    assert "BadHttpMessage" in aiohttp_record["exception"]
    asyncio_record = by_logger["asyncio"]
    assert asyncio_record["event"].startswith("Task exception was never retrieved")
    assert "provoked: nobody retrieves this" in asyncio_record["exception"]
    assert "provoked: a warning" in by_logger["py.warnings"]["event"]
    for record in (aiohttp_record, asyncio_record):
        assert record["timestamp"].endswith("Z")
    # the daemon's own lines are there too, in the same stream
    assert {"started", "stopped"} <= {record["event"] for record in stdout_records}

