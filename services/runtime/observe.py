"""Logs every RPC once and counts it with the grpc-prometheus metric names.

Label values follow go-grpc-prometheus (grpc_code "OK", "NotFound", "Canceled", ...) so existing
dashboards and alerts keep working.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from .logs import get_logger
from .rpc import Invoke, RpcInfo

log = get_logger("rpc")

_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def go_code_name(code: grpc.StatusCode) -> str:
    """The name Go's codes.Code.String() gives, which grpc-prometheus uses as grpc_code."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


class _MethodSeries:
    """One method's metric children, looked up once: labels() takes a lock and builds a key."""

    def __init__(self, observer: RpcObserver, info: RpcInfo) -> None:
        self.labels = (info.kind, info.service, info.method)
        self.started = observer.started.labels(*self.labels)
        self.seconds = observer.seconds.labels(*self.labels)
        self._handled_family = observer.handled
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(
                *self.labels, go_code_name(code))
        return child


class RpcObserver:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            (*_LABELS, "grpc_code"), registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds", "Time from the start of an RPC to its status.",
            _LABELS, registry=registry,
        )
        # Keyed by method: the server's methods are a fixed, small set.
        self._series: dict[str, _MethodSeries] = {}

    async def __call__(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any], invoke: Invoke
    ) -> Any:
        series = self._series.get(info.full_method)
        if series is None:
            series = self._series[info.full_method] = _MethodSeries(self, info)
        series.started.inc()
        began = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            result = await invoke()
            code = _context_code(context) or grpc.StatusCode.OK
            return result
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = _context_code(context) or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            # grpc answers with a code the handler set before raising, else UNKNOWN: a bug.
            code = _context_code(context) or grpc.StatusCode.UNKNOWN
            if code is grpc.StatusCode.UNKNOWN:
                log.exception("rpc_handler_error", method=info.full_method)
            raise
        finally:
            elapsed = time.perf_counter() - began
            series.handled(code).inc()
            series.seconds.observe(elapsed)
            log.info("rpc", method=info.full_method, code=code.name,
                     duration_ms=round(elapsed * 1000, 3), peer=context.peer())


_CODES_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


def _context_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    code = context.code()
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    # grpc.aio reports the code as the core's integer value.
    return _CODES_BY_VALUE.get(code)
