"""The orchestrator's domain metrics: Prometheus series for /metrics, flat figures for GetMetrics.

Labels are the task class only (outcomes are separate counters), so cardinality is the number of
configured classes, never the number of tasks: no task, run or workflow id is ever a label.

GetMetrics names (`snapshot`):
  totals   submitted_total, completed_total, failed_total, cancelled_total, retries_total,
           queue_depth_total, running_total
  latency  dispatch_latency_avg_seconds, dispatch_latency_p99_seconds,
           task_duration_avg_seconds, task_duration_p99_seconds
  by class queue_depth.<class>, running.<class>, submitted.<class>, completed.<class>,
           failed.<class>, cancelled.<class>, retries.<class>
A requested name is exact, or a prefix when it ends with `*` (`queue_depth.*`, `dispatch_*`,
`*` alone = everything). An exact name that does not exist, or a prefix no metric could ever
match, is InvalidArgument naming it; a per-class name is valid for every class the orchestrator
has configured or seen.

Averages are over the daemon's lifetime (histogram sum / count). p99 is exact over a window of
the most recent observations (WINDOW of them, across classes): a histogram's buckets would only
give an interpolated guess, and a recent window is what someone asking "how slow is dispatch now"
wants. Prometheus users get the full histograms for their own quantiles.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from agent_infra.runtime.errors import InvalidArgument
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .model import TaskState

PREFIX = "agent_infra_orchestrator_"
WINDOW = 1024

# Queue waits range from milliseconds (idle) to hours (a deep backlog); tasks from a no-op to a
# long training job. The default buckets stop at 10 s and would flatten both.
DISPATCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
                    7200.0, 21600.0)

_COUNTERS = ("submitted", "completed", "failed", "cancelled", "retries")
_GAUGES = ("queue_depth", "running")
PER_CLASS = (*_GAUGES, *_COUNTERS)
TOTALS = tuple(f"{family}_total" for family in PER_CLASS)
LATENCIES = ("dispatch_latency_avg_seconds", "dispatch_latency_p99_seconds",
             "task_duration_avg_seconds", "task_duration_p99_seconds")

_OUTCOMES = {TaskState.COMPLETED: "completed", TaskState.FAILED: "failed",
             TaskState.CANCELLED: "cancelled"}


class _Latency:
    """Lifetime sum and count for the average, and a recent window for p99."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=WINDOW)

    def observe(self, seconds: float) -> None:
        self.total += seconds
        self.count += 1
        self.recent.append(seconds)

    def average(self) -> float:
        return self.total / self.count if self.count else 0.0

    def p99(self) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        # Nearest rank: the smallest value with at least 99% of the window at or below it.
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry, *, classes: Iterable[str] = ()) -> None:
        """`classes`: the configured task classes, exported as zeros before any task arrives."""
        label = ("class",)
        self._counters = {
            "submitted": Counter(f"{PREFIX}tasks_submitted", "Tasks accepted by SubmitTask.",
                                 label, registry=registry),
            "completed": Counter(f"{PREFIX}tasks_completed", "Tasks that completed.",
                                 label, registry=registry),
            "failed": Counter(f"{PREFIX}tasks_failed", "Tasks that ended failed.",
                              label, registry=registry),
            "cancelled": Counter(f"{PREFIX}tasks_cancelled", "Tasks that were cancelled.",
                                 label, registry=registry),
            "retries": Counter(f"{PREFIX}task_retries", "Task executions retried.",
                               label, registry=registry),
        }
        self._gauges = {
            "queue_depth": Gauge(f"{PREFIX}queue_depth", "Tasks pending, by class.",
                                 label, registry=registry),
            "running": Gauge(f"{PREFIX}tasks_running", "Tasks running, by class.",
                             label, registry=registry),
        }
        self._dispatch_latency = Histogram(
            f"{PREFIX}task_dispatch_latency_seconds", "Time from submit to start, by class.",
            label, buckets=DISPATCH_BUCKETS, registry=registry)
        self._duration = Histogram(
            f"{PREFIX}task_duration_seconds", "Time from start to a terminal state, by class.",
            label, buckets=DURATION_BUCKETS, registry=registry)
        # The figures GetMetrics reads, kept here rather than read back from prometheus_client
        # internals: family -> class -> value.
        self._values: dict[str, dict[str, float]] = {family: {} for family in PER_CLASS}
        self._waits = _Latency()
        self._runs = _Latency()
        # class -> [sum, count] of submit-to-start waits (the original's gpu_wait_seconds).
        self._class_waits: dict[str, list[float]] = {}
        self._depths: Callable[[], Mapping[str, tuple[int, int]]] = dict
        # Series children by family, then class: labels() takes a lock and builds a key, and the
        # scheduler reports on every submit, dispatch and completion.
        self._children: dict[str, dict[str, Any]] = {
            family: {} for family in (*PER_CLASS, "dispatch_latency", "duration")}
        self.register_classes(classes)

    def register_classes(self, classes: Iterable[str]) -> None:
        """Make classes known (zero-valued) ahead of traffic; called again on config reload."""
        for cls in classes:
            self._touch(cls)

    # -- called by the scheduler -----------------------------------------------------------

    def submitted(self, cls: str) -> None:
        self._count("submitted", cls)

    def started(self, cls: str, waited_seconds: float) -> None:
        """A task began executing `waited_seconds` after it was submitted."""
        waited = max(0.0, waited_seconds)
        self._touch(cls)
        self._children["dispatch_latency"][cls].observe(waited)
        self._waits.observe(waited)
        total = self._class_waits.setdefault(cls, [0.0, 0.0])
        total[0] += waited
        total[1] += 1

    def finished(self, cls: str, status: str, duration_seconds: float | None) -> None:
        """A terminal state; `duration_seconds` None when the task never ran (cancelled while
        pending), so it does not drag the duration figures towards zero."""
        outcome = _OUTCOMES.get(TaskState(status))
        if outcome is None:
            raise ValueError(f"finished() needs a terminal status, got {status!r}")
        self._count(outcome, cls)
        if duration_seconds is not None:
            duration = max(0.0, duration_seconds)
            self._children["duration"][cls].observe(duration)
            self._runs.observe(duration)

    def retried(self, cls: str) -> None:
        self._count("retries", cls)

    def watch_queues(self, depths: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        """Read queue depth and running tasks from `depths` (class -> (pending, running)) when
        /metrics or GetMetrics asks, rather than being told on every submit and dispatch."""
        self._depths = depths
        for cls in list(self._values["submitted"]):
            self._bind_queue_gauges(cls)

    def _bind_queue_gauges(self, cls: str) -> None:
        for index, family in enumerate(_GAUGES):
            self._children[family][cls].set_function(
                lambda cls=cls, index=index: float(self._depths().get(cls, (0, 0))[index]))

    # -- read by GetMetrics ----------------------------------------------------------------

    def mean_wait(self, classes: Iterable[str]) -> float:
        """The average submit-to-start wait of the tasks of `classes` started since the daemon
        started (0 before any)."""
        total = count = 0.0
        for cls in classes:
            if cls in self._class_waits:
                total += self._class_waits[cls][0]
                count += self._class_waits[cls][1]
        return total / count if count else 0.0

    def counts(self, family: str) -> dict[str, float]:
        """One family's figure per class (see PER_CLASS), counters since the daemon started."""
        self._figures()  # gauges read now
        return dict(self._values[family])

    def snapshot(self, names: Sequence[str] = ()) -> dict[str, float]:
        """The flat figures (see the module docstring for names and filters); empty = all."""
        figures = self._figures()
        if not names:
            return figures
        self._check_names(names, figures)
        selected: dict[str, float] = {}
        for name in names:
            if name.endswith("*"):
                prefix = name[:-1]
                selected.update((key, value) for key, value in figures.items()
                                if key.startswith(prefix))
            else:
                selected[name] = figures[name]
        return selected

    def _figures(self) -> dict[str, float]:
        for cls, pair in self._depths().items():
            self._touch(cls)
            for family, count in zip(_GAUGES, pair, strict=True):
                self._values[family][cls] = float(count)
        figures: dict[str, float] = {}
        for family in PER_CLASS:
            by_class = self._values[family]
            figures[f"{family}_total"] = float(sum(by_class.values()))
            for cls, value in sorted(by_class.items()):
                figures[f"{family}.{cls}"] = value
        figures["dispatch_latency_avg_seconds"] = self._waits.average()
        figures["dispatch_latency_p99_seconds"] = self._waits.p99()
        figures["task_duration_avg_seconds"] = self._runs.average()
        figures["task_duration_p99_seconds"] = self._runs.p99()
        return figures

    @staticmethod
    def _check_names(names: Sequence[str], figures: dict[str, float]) -> None:
        # Per-class families are valid prefixes even before any class exists, so a dashboard
        # asking for `queue_depth.*` on an idle daemon gets nothing rather than an error.
        vocabulary = [*TOTALS, *LATENCIES, *(f"{family}." for family in PER_CLASS)]
        unknown: list[str] = []
        for name in names:
            if name.endswith("*"):
                prefix = name[:-1]
                possible = any(word.startswith(prefix) for word in vocabulary) or any(
                    prefix.startswith(f"{family}.") for family in PER_CLASS)
                if not possible:
                    unknown.append(name)
            elif name not in figures:
                unknown.append(name)
        if unknown:
            raise InvalidArgument(
                f"metric_names: unknown {', '.join(repr(name) for name in unknown)}; known: "
                f"{', '.join((*TOTALS, *LATENCIES))}, <family>.<class> for families "
                f"{', '.join(PER_CLASS)}; end a name with '*' to match a prefix")

    def _count(self, family: str, cls: str) -> None:
        self._touch(cls)
        self._children[family][cls].inc()
        self._values[family][cls] += 1

    def _touch(self, cls: str) -> None:
        """First sight of a class: create its series so every figure reads 0, not absent."""
        if cls in self._values["submitted"]:
            return
        for family in PER_CLASS:
            self._values[family][cls] = 0.0
        for family, counter in self._counters.items():
            self._children[family][cls] = counter.labels(cls)
        for family, gauge in self._gauges.items():
            self._children[family][cls] = gauge.labels(cls)
        self._children["dispatch_latency"][cls] = self._dispatch_latency.labels(cls)
        self._children["duration"][cls] = self._duration.labels(cls)
        self._bind_queue_gauges(cls)
