"""Bounded capture of a task's stdout or stderr, and fitting the captured text into a response.

The limit is on the text as it goes on the wire (UTF-8), not on the bytes the task wrote: bytes
that are not UTF-8 become U+FFFD (three bytes each), so 1 MiB of 0xff would otherwise be 3 MiB.
"""

from __future__ import annotations

import codecs


def utf8_prefix(text: str, limit: int) -> tuple[str, bool]:
    """The longest prefix of `text` whose UTF-8 form is at most `limit` bytes; whether it was cut.
    A character the cut would split is dropped whole."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    return data[:max(0, limit)].decode("utf-8", "ignore"), True


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

    def render(self) -> tuple[str, bool]:
        """(the text, at most `limit` bytes as UTF-8; whether anything the task wrote is left
        out)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        cut_raw = self.total > self.limit
        # When cut at the limit, a character split by the cut is dropped rather than mangled.
        text = decoder.decode(b"".join(self._parts), final=not cut_raw)
        text, cut_encoded = utf8_prefix(text, self.limit)
        return text, cut_raw or cut_encoded

    @property
    def truncated(self) -> bool:
        return self.render()[1]

    def text(self) -> str:
        return self.render()[0]
