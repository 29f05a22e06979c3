"""Pull several images at once; one image failing does not stop the others.

Progress goes through a bounded queue: a subscriber that reads slowly (or not at all) holds the
pulls back (their engine streams stop being read) rather than growing a buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from .docker import images
from .docker.engine import DockerEngine
from .docker.images import PullProgress

PULL_CONCURRENCY = 3
PROGRESS_BUFFER = 64  # progress items held for one subscriber, at most


async def pull_all(engine: DockerEngine, names: Sequence[str]) -> AsyncIterator[PullProgress]:
    """Progress of every pull, interleaved as it comes; ends when all pulls are over."""
    queue: asyncio.Queue[PullProgress | None] = asyncio.Queue(PROGRESS_BUFFER)
    slots = asyncio.Semaphore(PULL_CONCURRENCY)

    async def pull_one(image: str) -> None:
        async with slots:
            async for progress in images.pull(engine, image):
                await queue.put(progress)

    async def pull_every() -> None:
        try:
            await asyncio.gather(*(pull_one(image) for image in dict.fromkeys(names)))
        finally:
            # The end (or the error, raised by `await worker`); not when cancelled: the reader
            # has gone, nobody waits for it, and the queue may be full.
            this = asyncio.current_task()
            if this is None or not this.cancelling():
                await queue.put(None)

    worker = asyncio.ensure_future(pull_every())
    try:
        while (progress := await queue.get()) is not None:
            yield progress
        await worker
    finally:
        worker.cancel()
