"""structlog set-up: JSON lines when stdout is not a terminal, console output when it is.

The standard library's records go the same way, so a daemon's log stream has one format.
Warnings and errors repeated in a burst (asyncio's "Too many open files" on every accept, say)
are rate limited per message: past a burst, what is left out is counted and reported as one
`similar_lines_suppressed` line.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

# Bumped by every configure_logging(), so loggers bound under an older set-up bind again.
_generation = 0
#: Characters of log lines that may wait for the loop's next turn before they are written.
MAX_PENDING_CHARS = 64 * 1024
#: Identical warning/error lines (same level, logger and event) let through in a burst, and
#: refilled per second after it.
REPEAT_BURST = 10
REPEAT_PER_SECOND = 1.0
#: How long after the first suppressed line the count of suppressed lines is reported.
SUPPRESSION_REPORT_SECONDS = 10.0
SUPPRESSED_EVENT = "similar_lines_suppressed"
_LIMITED_LEVELS = frozenset({"warning", "error", "critical", "exception"})


class _LineWriter:
    """Where log lines go, ours and the standard library's: a structlog logger that collects
    lines and writes them to a text stream in one write() per event-loop turn.

    A daemon logs every RPC, and a write syscall per line cost more than formatting it. Lines
    logged on the loop's thread wait for the loop's next turn and leave together, in one write
    and one flush: whatever the stream's own buffering, PYTHONUNBUFFERED=1 included (with it a
    text stream writes through at each write() call). At most `max_pending` characters wait: a
    turn that logs more writes them out at once. From other threads, or with no loop bound,
    each line is written at once, after any that wait, so the order is kept.
    """

    def __init__(self, stream: TextIO, max_pending: int = MAX_PENDING_CHARS) -> None:
        self._stream = stream
        self._max_pending = max_pending
        # Reentrant: a line logged while writing (a warning from the stream) must not deadlock.
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._pending_chars = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._flush_scheduled = False

    def msg(self, message: str) -> None:
        on_loop = self._loop is not None and threading.get_ident() == self._loop_thread
        with self._lock:
            self._pending.append(message)
            self._pending_chars += len(message) + 1
            if on_loop and self._pending_chars < self._max_pending and self._flush_next_turn():
                return
            self._write_pending()

    # structlog calls the method named after the level.
    debug = info = warning = warn = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write what waits, now."""
        with self._lock:
            self._write_pending()

    def _flush_next_turn(self) -> bool:
        """Whether a flush runs at the loop's next turn (scheduling one if needed)."""
        if self._flush_scheduled:
            return True
        assert self._loop is not None
        try:
            self._loop.call_soon(self._scheduled_flush)
        except RuntimeError:  # the loop is closed: nothing would run the callback
            return False
        self._flush_scheduled = True
        return True

    def _write_pending(self) -> None:
        if not self._pending:
            return
        self._pending.append("")  # the last line's newline
        text = "\n".join(self._pending)
        self._pending = []
        self._pending_chars = 0
        self._stream.write(text)
        self._stream.flush()

    def _scheduled_flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            self._write_pending()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        with self._lock:
            self._write_pending()
            self._loop = loop
            self._loop_thread = threading.get_ident() if loop is not None else None
            self._flush_scheduled = False


_writer: _LineWriter | None = None


class _RepeatLimiter:
    """A structlog processor: a token bucket per (level, logger, event) for warnings and errors.

    Lines past the bucket are dropped and counted; the counts are reported as one
    `similar_lines_suppressed` warning per key, SUPPRESSION_REPORT_SECONDS after the first
    dropped line (on the bound loop), or at the next flush().
    """

    def __init__(self, burst: int = REPEAT_BURST, per_second: float = REPEAT_PER_SECOND,
                 clock: Any = time.monotonic, max_keys: int = 1024) -> None:
        self._burst = float(burst)
        self._per_second = per_second
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}
        self._report_scheduled = False

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        level = str(event.get("level", method))
        if level not in _LIMITED_LEVELS or event.get("event") == SUPPRESSED_EVENT:
            return event
        key = (level, str(event.get("logger", "")), str(event.get("event", ""))[:300])
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._per_second)
            if tokens >= 1.0:
                if len(self._buckets) >= self._max_keys and key not in self._buckets:
                    self._buckets.clear()
                self._buckets[key] = (tokens - 1.0, now)
                return event
            self._buckets[key] = (tokens, now)
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            schedule = not self._report_scheduled
            self._report_scheduled = True
        if schedule:
            self._schedule_report()
        raise structlog.DropEvent

    def _schedule_report(self) -> None:
        loop = _writer._loop if _writer is not None else None
        try:
            if loop is None:
                raise RuntimeError("no loop")
            loop.call_soon_threadsafe(loop.call_later, SUPPRESSION_REPORT_SECONDS,
                                      self.report)
        except RuntimeError:  # no loop, or a closed one: the next flush() reports
            with self._lock:
                self._report_scheduled = False

    def report(self) -> None:
        """Log how many lines of each key were left out since the last report."""
        with self._lock:
            counts, self._suppressed = self._suppressed, {}
            self._report_scheduled = False
        for (level, logger, text), count in counts.items():
            get_logger("logs").warning(
                SUPPRESSED_EVENT, message=f"{count} similar lines suppressed", count=count,
                similar_level=level, similar_logger=logger or None, similar_event=text)


_repeats = _RepeatLimiter()


def _to_json(event: dict[str, Any], **_: Any) -> str:
    """orjson, and never an exception out of a log call: what orjson refuses (an int beyond 64
    bits) goes through the standard library, and what neither encodes (a tuple as a key) is
    written as its repr()."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(event, default=repr)
    except (TypeError, ValueError):
        return json.dumps({key: value if isinstance(value, str) else repr(value)
                           for key, value in event.items()})


class _UtcTimestamp:
    """`timestamp` as ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso",
    utc=True) writes it, with the date and time formatted once per second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """(Re)configure logging; safe to call again on reload.

    Records of the standard library's loggers (grpc, aiohttp, asyncio, warnings) are rendered
    by the same processors and written by the same writer as ours: in JSON mode every line on
    the stream is one JSON object, with the record's logger name as `logger`.
    """
    global _generation, _writer
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_to_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    timestamper = _UtcTimestamp()
    shared: list[Any] = [structlog.processors.add_log_level, _repeats, timestamper,
                         structlog.processors.StackInfoRenderer()]
    rendering: list[Any] = [structlog.processors.format_exc_info] if use_json else []
    rendering.append(renderer)
    previous = _writer
    writer = _writer = _LineWriter(out)
    if previous is not None:
        previous.flush()
        writer.bind(previous._loop)
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    _generation += 1
    # Libraries log through the standard library: keep their warnings, in our format.
    handler = _StdlibHandler(writer)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    ))
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), handlers=[handler],
                        force=True)
    logging.captureWarnings(True)


class _StdlibHandler(logging.Handler):
    """Hands the standard library's records, rendered by structlog, to our line writer."""

    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except structlog.DropEvent:
            pass  # a repeat over the limit, counted
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._writer.flush()


def flush() -> None:
    """Write every waiting log line now (before os._exit, which skips every clean-up), with
    the count of repeated lines left out."""
    _repeats.report()
    if _writer is not None:
        _writer.flush()


# A line logged in the loop's last turn is still written when the interpreter exits normally.
atexit.register(flush)


def bind_to_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Flush log lines written on `loop`'s thread once per loop turn; None: flush each at once
    (and flush what is pending). A daemon binds its loop while it runs."""
    if _writer is not None:
        _writer.bind(loop)


class _Logger:
    """A named logger, bound once per logging configuration.

    structlog's lazy proxy builds a new bound logger on every call; its own cache would keep a
    logger on the configuration it first saw, and a SIGHUP may change the level.
    """

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._generation = -1

    def __getattr__(self, attribute: str) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger(self._name).bind()
            self._generation = _generation
        return getattr(self._bound, attribute)


def get_logger(name: str) -> Any:
    return _Logger(name)
