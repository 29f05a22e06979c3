"""structlog set-up: JSON lines when stdout is not a terminal, console output when it is."""

from __future__ import annotations

import asyncio
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


class _LineWriter:
    """Where log lines go: a structlog logger writing one line per call to a text stream,
    flushed once per event-loop turn on the loop's thread.

    A daemon logs every RPC, and a write syscall per line cost more than formatting it, so on
    the loop's thread the flush waits for the loop's next turn: the lines of one turn leave in
    one write, none later than that turn. From other threads, or with no loop bound, each line
    is flushed at once.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._flush_scheduled = False

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            if self._flush_scheduled:
                return
            try:
                self._loop.call_soon(self._scheduled_flush)
                self._flush_scheduled = True
                return
            except RuntimeError:  # the loop is closed: nothing would run the callback
                pass
        self.flush()

    # structlog calls the method named after the level.
    debug = info = warning = warn = error = critical = exception = fatal = msg

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.flush()
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else None
        self._flush_scheduled = False


_writer: _LineWriter | None = None


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
    """(Re)configure logging; safe to call again on reload."""
    global _generation, _writer
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_to_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Any] = [
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    previous = _writer
    writer = _writer = _LineWriter(out)
    if previous is not None:
        previous.flush()
        writer.bind(previous._loop)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    _generation += 1
    # Libraries (grpc, aiohttp, asyncio) log through the standard library: keep their warnings.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr, force=True)


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
