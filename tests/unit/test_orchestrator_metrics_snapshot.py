"""Orchestrator metrics: GetMetrics figures, name filters, and bounded Prometheus labels."""

from __future__ import annotations

import pytest
from agent_infra.orchestrator.metrics import OrchestratorMetrics
from agent_infra.orchestrator.model import TaskState
from agent_infra.runtime.errors import InvalidArgument
from prometheus_client import CollectorRegistry, generate_latest


def busy_metrics() -> tuple[CollectorRegistry, OrchestratorMetrics]:
    registry = CollectorRegistry()
    metrics = OrchestratorMetrics(registry, classes=["cpu_short", "gpu"])
    for _ in range(3):
        metrics.submitted("cpu_short")
    metrics.submitted("cpu_long")
    metrics.started("cpu_short", 0.5)
    metrics.started("cpu_short", 1.5)
    metrics.finished("cpu_short", TaskState.COMPLETED, 2.0)
    metrics.finished("cpu_short", "failed", 4.0)
    metrics.finished("cpu_long", TaskState.CANCELLED, None)  # cancelled before it ran
    metrics.retried("cpu_short")
    metrics.watch_queues(lambda: {"cpu_short": (1, 0), "cpu_long": (0, 0)})
    return registry, metrics


def test_snapshot_reports_totals_per_class_and_latencies() -> None:
    _, metrics = busy_metrics()
    figures = metrics.snapshot([])
    assert figures["submitted_total"] == 4
    assert figures["submitted.cpu_short"] == 3 and figures["submitted.cpu_long"] == 1
    assert figures["completed_total"] == 1 and figures["failed_total"] == 1
    assert figures["cancelled_total"] == 1 and figures["cancelled.cpu_long"] == 1
    assert figures["retries_total"] == 1
    assert figures["queue_depth.cpu_short"] == 1 and figures["queue_depth_total"] == 1
    assert figures["running_total"] == 0
    # Configured classes read zero before any traffic.
    assert figures["queue_depth.gpu"] == 0 and figures["submitted.gpu"] == 0
    assert figures["dispatch_latency_avg_seconds"] == pytest.approx(1.0)
    assert figures["dispatch_latency_p99_seconds"] == pytest.approx(1.5)
    # The never-run cancelled task does not count towards durations.
    assert figures["task_duration_avg_seconds"] == pytest.approx(3.0)
    assert figures["task_duration_p99_seconds"] == pytest.approx(4.0)


def test_p99_is_over_the_recent_window() -> None:
    metrics = OrchestratorMetrics(CollectorRegistry())
    for value in range(1, 101):
        metrics.started("cpu_short", float(value))
    assert metrics.snapshot(["dispatch_latency_p99_seconds"]) == {
        "dispatch_latency_p99_seconds": 99.0}
    empty = OrchestratorMetrics(CollectorRegistry())
    assert empty.snapshot(["dispatch_latency_p99_seconds", "task_duration_avg_seconds"]) == {
        "dispatch_latency_p99_seconds": 0.0, "task_duration_avg_seconds": 0.0}


def test_names_filter_exactly_or_by_prefix() -> None:
    _, metrics = busy_metrics()
    assert metrics.snapshot(["completed_total", "running.cpu_short"]) == {
        "completed_total": 1.0, "running.cpu_short": 0.0}
    assert set(metrics.snapshot(["queue_depth.*"])) == {
        "queue_depth.cpu_long", "queue_depth.cpu_short", "queue_depth.gpu"}
    assert set(metrics.snapshot(["dispatch_*"])) == {
        "dispatch_latency_avg_seconds", "dispatch_latency_p99_seconds"}
    assert metrics.snapshot(["*"]) == metrics.snapshot([])
    # A family prefix is valid even when no class has been seen yet.
    assert OrchestratorMetrics(CollectorRegistry()).snapshot(["running.*"]) == {}


def test_unknown_names_are_invalid_argument_naming_them() -> None:
    _, metrics = busy_metrics()
    with pytest.raises(InvalidArgument) as caught:
        metrics.snapshot(["completed_total", "queue_depth.nope", "bogus*", "latency"])
    message = str(caught.value)
    assert "'queue_depth.nope'" in message and "'bogus*'" in message and "'latency'" in message
    assert "'completed_total'" not in message


def test_finished_needs_a_terminal_status() -> None:
    metrics = OrchestratorMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="terminal"):
        metrics.finished("cpu_short", TaskState.RUNNING, 1.0)


def test_prometheus_series_are_labelled_by_class_only() -> None:
    registry, _ = busy_metrics()
    families = {family.name: family for family in registry.collect()}
    prefix = "agent_infra_orchestrator_"
    expected = {f"{prefix}{name}" for name in (
        "tasks_submitted", "tasks_completed", "tasks_failed", "tasks_cancelled", "task_retries",
        "queue_depth", "tasks_running", "task_dispatch_latency_seconds", "task_duration_seconds")}
    assert expected <= set(families)
    for family in families.values():
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}  # histogram buckets add `le`
            assert labels == {"class"}, (sample.name, sample.labels)
            assert sample.labels["class"] in {"cpu_short", "cpu_long", "gpu"}
    text = generate_latest(registry).decode()
    assert f'{prefix}tasks_submitted_total{{class="cpu_short"}} 3.0' in text
    assert f'{prefix}queue_depth{{class="cpu_short"}} 1.0' in text
    assert f'{prefix}task_dispatch_latency_seconds_count{{class="cpu_short"}} 2.0' in text


def test_queue_gauges_are_read_from_the_scheduler_when_scraped() -> None:
    registry = CollectorRegistry()
    metrics = OrchestratorMetrics(registry, classes=["cpu_short"])
    depths = {"cpu_short": (4, 2)}
    metrics.watch_queues(lambda: depths)
    text = generate_latest(registry).decode()
    assert 'agent_infra_orchestrator_queue_depth{class="cpu_short"} 4.0' in text
    assert 'agent_infra_orchestrator_tasks_running{class="cpu_short"} 2.0' in text
    depths["cpu_short"] = (0, 1)
    depths["gpu"] = (7, 0)  # a class first seen in the scheduler
    assert metrics.snapshot(["queue_depth.*"]) == {"queue_depth.cpu_short": 0.0,
                                                   "queue_depth.gpu": 7.0}
    text = generate_latest(registry).decode()
    assert 'agent_infra_orchestrator_queue_depth{class="gpu"} 7.0' in text
    assert 'agent_infra_orchestrator_tasks_running{class="cpu_short"} 1.0' in text
