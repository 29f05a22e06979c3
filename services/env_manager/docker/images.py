"""Images: is one present, and pulling one with progress folded across its layers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import aiodocker
import aiohttp
from agent_infra.runtime.errors import NotFound

from .engine import CONNECTION_FAILED, DockerEngine

PullStatus = Literal["downloading", "extracting", "complete", "error"]
DEFAULT_STALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class PullProgress:
    image: str
    status: PullStatus
    current: int  # bytes downloaded, summed over the layers seen so far
    total: int  # bytes to download, summed over the layers whose size is known so far
    percent: int
    message: str


async def image_present(engine: DockerEngine, image: str) -> bool:
    try:
        await engine.call(f"inspect image {image}", lambda: engine.client.images.inspect(image))
    except NotFound:
        return False
    return True


class PullFolder:
    """Folds the engine's per-layer pull events into one running total for the image.

    Layers appear as the engine reaches them, so `total` can grow during a pull and `percent`
    is the downloaded share of what is known at that moment.
    """

    def __init__(self, image: str) -> None:
        self.image = image
        self._layers: dict[str, list[int]] = {}  # id -> [current, total]
        self._last: tuple[PullStatus, int, int] | None = None
        self._summary = ""

    def feed(self, event: Mapping[str, Any]) -> PullProgress | None:
        """The progress to report after `event`, or None when nothing visible changed."""
        error = event.get("error") or (event.get("errorDetail") or {}).get("message")
        if error:
            return self.error(str(error))
        status = str(event.get("status", ""))
        layer = str(event.get("id", ""))
        detail = event.get("progressDetail") or {}
        phase: PullStatus = "downloading"
        if status == "Downloading" and layer:
            self._layers[layer] = [int(detail.get("current", 0)), int(detail.get("total", 0))]
        elif status in ("Download complete", "Verifying Checksum") and layer:
            self._finish(layer)
        elif status == "Pull complete" and layer:
            # The end of a layer's extraction: no new phase of its own.
            self._finish(layer)
            phase = self._last[0] if self._last else "downloading"
        elif status == "Extracting" and layer:
            self._finish(layer)
            phase = "extracting"
        else:
            if status.startswith("Status:") or status.startswith("Digest:"):
                self._summary = status
            return None
        current, total = self._totals()
        if self._last == (phase, current, total):
            return None
        self._last = (phase, current, total)
        label = f"{layer}: {status}" if layer else status
        return self._item(phase, current, total, label)

    def complete(self) -> PullProgress:
        _, total = self._totals()
        return PullProgress(self.image, "complete", total, total, 100,
                            self._summary or f"pulled {self.image}")

    def error(self, message: str) -> PullProgress:
        current, total = self._totals()
        return self._item("error", current, total, message)

    def _finish(self, layer: str) -> None:
        sizes = self._layers.get(layer)
        if sizes is not None and sizes[1] > 0:
            sizes[0] = sizes[1]

    def _totals(self) -> tuple[int, int]:
        known = [sizes for sizes in self._layers.values() if sizes[1] > 0]
        return sum(min(c, t) for c, t in known), sum(t for _, t in known)

    def _item(self, status: PullStatus, current: int, total: int, message: str) -> PullProgress:
        percent = current * 100 // total if total else 0
        return PullProgress(self.image, status, current, total, percent, message)


def split_tag(image: str) -> tuple[str, str]:
    """(name, tag) for the create-image call: an empty tag would pull every tag of the repo."""
    if "@" in image:
        return image, ""
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


async def pull(engine: DockerEngine, image: str, *, timeout: float | None = None,
               stall_timeout: float = DEFAULT_STALL_TIMEOUT
               ) -> AsyncGenerator[PullProgress, None]:
    """Pulls `image`, yielding progress; ends with one "complete" or one "error" item.

    A failed pull is an "error" item carrying the engine's message, never an exception. The pull
    is abandoned after `stall_timeout` seconds without any event from the engine, or `timeout`
    seconds in all. Raises Unavailable only when the engine is unreachable.
    """
    folder = PullFolder(image)
    started = time.monotonic()

    def budget() -> float:
        if timeout is None:
            return stall_timeout
        return max(0.0, min(stall_timeout, timeout - (time.monotonic() - started)))

    def timed_out() -> PullProgress:
        if timeout is not None and time.monotonic() - started >= timeout:
            return folder.error(f"pull of {image} did not finish within {timeout:g}s")
        return folder.error(f"pull of {image} made no progress for {stall_timeout:g}s")

    name, tag = split_tag(image)
    params = {"fromImage": name, **({"tag": tag} if tag else {})}
    # The last item is yielded only once the response is closed, so an abandoned pull is let go
    # before the consumer sees the error, not whenever it next resumes this generator.
    final: PullProgress | None = None  # None: the stream ended well
    async with AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(budget()):
                response = await stack.enter_async_context(engine.client._query(
                    "images/create", "POST", params=params, timeout=aiohttp.ClientTimeout()))
            # close, not release: dropping the connection makes the engine abandon the pull
            # (a registry request already under way still runs to its own timeout there).
            stack.callback(response.close)
            while True:
                async with asyncio.timeout(budget()):
                    line = await response.content.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a blank line: the engine sends JSON objects, one a line
                if not isinstance(event, dict):
                    continue
                item = folder.feed(event)
                if item is not None and item.status == "error":
                    final = item
                    break
                if item is not None:
                    yield item
        except TimeoutError:
            final = timed_out()
        except aiodocker.DockerError as exc:
            if exc.status == CONNECTION_FAILED:
                raise engine.unavailable(exc) from None
            final = folder.error(str(exc.message))
        except (aiohttp.ClientError, OSError) as exc:
            raise engine.unavailable(exc) from None
    yield folder.complete() if final is None else final
