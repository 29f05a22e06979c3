"""Bounded capture of a task's stdout or stderr: the first `limit` bytes kept, the rest counted."""

from __future__ import annotations

import codecs


class StreamCapture:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._parts: list[bytes] = []
        self._kept = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self._kept
        if room > 0 and data:
            part = data[:room]
            self._parts.append(part)
            self._kept += len(part)

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # When cut at the limit, a character split by the cut is dropped rather than mangled.
        return decoder.decode(b"".join(self._parts), final=not self.truncated)
