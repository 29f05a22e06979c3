"""GET /console/stream: the console's server-sent events, read as a browser's EventSource does.

A real orchestrator with nothing dispatched (classes at concurrency 0), so the only events are
the test's own submits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.daemon_support import DaemonProcess, running_daemon
from tests.orchestrator_support import new_id

TIMEOUT = aiohttp.ClientTimeout(total=30)


async def messages(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """Each SSE message's fields (id, event, data); comments and the retry line skipped."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            if key != "retry":
                fields[key] = value


async def submit(http: aiohttp.ClientSession, daemon: DaemonProcess, task_id: str) -> None:
    async with http.post(f"{daemon.http_url}/queue/submit", json={"id": task_id}) as response:
        assert response.status == 201, await response.text()


async def test_live_events_then_a_reconnect_replays_from_last_event_id(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text("[classes.cpu_short]\nconcurrency = 0\n")
    async with running_daemon("orchestrator", tmp_path, args=[
            "--config", str(config), "--data-dir", str(tmp_path / "data"),
            "--env-managers", "127.0.0.1:9"]) as daemon, \
            aiohttp.ClientSession(timeout=TIMEOUT) as http:
        stream = f"{daemon.http_url}/console/stream"
        ids = [new_id("sse") for _ in range(3)]
        async with http.get(stream) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            for task_id in ids:
                await submit(http, daemon, task_id)
            seen: list[dict[str, str]] = []
            async for message in messages(response):
                seen.append(message)
                if len(seen) == 3:
                    break
        assert [m["event"] for m in seen] == ["task_submitted"] * 3
        data = [json.loads(m["data"]) for m in seen]
        assert [d["resource_id"] for d in data] == ids
        seqs = [int(m["id"]) for m in seen]
        assert seqs == [d["seq"] for d in data] == list(range(seqs[0], seqs[0] + 3))

        # What a browser sends when it reconnects: everything after, stored then live.
        later = new_id("sse")
        async with http.get(stream, headers={"Last-Event-ID": str(seqs[0])}) as response:
            replayed: list[int] = []
            async for message in messages(response):
                replayed.append(int(message["id"]))
                if len(replayed) == 2:
                    await submit(http, daemon, later)
                if len(replayed) == 3:
                    break
        assert replayed == [seqs[1], seqs[2], seqs[2] + 1]

        # A type filter, and bad values named.
        async with http.get(stream, params={"types": "task_cancelled", "since": "1"}) as response:
            assert response.status == 200
        for query, named in (({"types": "task_exploded"}, "task_exploded"),
                             ({"since": "yesterday"}, "since"),
                             ({"last_event_id": "-1"}, "last_event_id")):
            async with http.get(stream, params=query) as response:
                assert response.status == 400, query
                assert named in (await response.json())["error"]


async def test_the_stream_ends_before_the_request_time_limit_saying_reconnect(
        tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[server]\nhttp_request_timeout = "3s"\n')
    async with running_daemon("orchestrator", tmp_path, args=[
            "--config", str(config), "--data-dir", str(tmp_path / "data"),
            "--env-managers", "127.0.0.1:9"]) as daemon, \
            aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(f"{daemon.http_url}/console/stream") as response:
            last = [message async for message in messages(response)]
        assert [m["event"] for m in last] == ["reconnect"]
        assert json.loads(last[0]["data"]) == {"last_event_id": 0,
                                               "reason": "request time limit"}


async def test_pages_send_a_policy_that_forbids_inline_script(tmp_path: Path) -> None:
    async with running_daemon("orchestrator", tmp_path, args=[
            "--data-dir", str(tmp_path / "data"), "--env-managers", "127.0.0.1:9"]) as daemon, \
            aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for path in ("/console/", "/console/tasks", "/console/events", "/console/login"):
            async with http.get(daemon.http_url + path) as response:
                assert response.status == 200, path
                policy = response.headers["Content-Security-Policy"]
                assert "script-src 'self'" in policy and "unsafe-inline" not in policy
                assert "<script>" not in await response.text()  # only <script src=...>
        # Hostile values in every parameter: an answer naming the problem, never a 500.
        hostile = ["x" * 5000, "-1", "1e400", "nan", "inf", "\x00", "../../etc/passwd",
                   "<script>", "9" * 40, "0001-01-01T00:00", "9999-12-31T23:59:59+14:00"]
        for value in hostile:
            for path, key in (("/console/tasks", "status"), ("/console/tasks", "class"),
                              ("/console/tasks", "id"), ("/console/tasks", "from"),
                              ("/console/tasks", "to"), ("/console/tasks", "page"),
                              ("/console/tasks", "size"), ("/console/events", "types"),
                              ("/console/events", "since"), ("/console/login", "next")):
                async with http.get(daemon.http_url + path, params={key: value}) as response:
                    assert response.status in (200, 400), (path, key, value, response.status)
                    assert "<script>" not in await response.text(), (path, key, value)
            for path in (f"/console/tasks/{value}", f"/console/static/{value}"):
                async with http.get(daemon.http_url + path) as response:
                    assert response.status in (404, 400), (path, response.status)
