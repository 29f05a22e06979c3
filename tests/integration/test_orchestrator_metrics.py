"""GetMetrics, /metrics and Health end to end, with real tasks run by a real env-manager."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from agent_infra.wire import orchestrator_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon_support import eventually, fetch_metrics, sample_value
from tests.orchestrator_support import (
    Stack,
    new_id,
    orchestrator_stack,
    rpc_error,
    submit,
    wait_done,
)

# Real daemons and containers; one event loop (and stack) for the module.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.docker]

CLASSES: dict[str, dict[str, int | str]] = {"held": {"concurrency": 0}}
CLASS_NAMES = {"cpu_short", "cpu_long", "gpu", "gpu_slurm", "held"}
PREFIX = "agent_infra_orchestrator_"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("orchestrator-metrics")
    async with orchestrator_stack(workdir, classes=CLASSES) as started:
        yield started


async def metrics(stack: Stack, *names: str) -> dict[str, float]:
    answer = await stack.stub.GetMetrics(pb.GetMetricsRequest(metric_names=list(names)),
                                         timeout=30)
    assert abs(answer.timestamp - time.time()) < 60
    return dict(answer.metrics)


async def run_one_good_and_one_bad(stack: Stack) -> list[str]:
    ids = [new_id("good"), new_id("bad")]
    await submit(stack.stub, ids[0], "true")
    await submit(stack.stub, ids[1], "exit 1")
    await wait_done(stack.stub, ids)
    return ids


async def test_get_metrics_counts_queues_and_outcomes_per_class(stack: Stack) -> None:
    before = await metrics(stack)
    for _ in range(3):
        await submit(stack.stub, new_id("queued"), task_class="held")
    await run_one_good_and_one_bad(stack)
    after = await metrics(stack)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("queue_depth.held") == 3 and grew("queue_depth_total") == 3
    assert grew("submitted.held") == 3 and grew("submitted.cpu_short") == 2
    assert grew("completed.cpu_short") == 1 and grew("failed.cpu_short") == 1
    assert grew("completed_total") == 1 and grew("failed_total") == 1
    assert after["running.cpu_short"] == 0 and after["queue_depth.cpu_short"] == 0
    assert after["dispatch_latency_avg_seconds"] > 0 and after["task_duration_avg_seconds"] > 0
    assert after["task_duration_p99_seconds"] >= after["task_duration_avg_seconds"] * 0.5
    assert {f"queue_depth.{name}" for name in CLASS_NAMES} <= set(after)


async def test_get_metrics_filters_by_name_and_prefix(stack: Stack) -> None:
    picked = await metrics(stack, "queue_depth.held", "completed_total")
    assert set(picked) == {"queue_depth.held", "completed_total"}
    depths = await metrics(stack, "queue_depth.*")
    assert set(depths) == {f"queue_depth.{name}" for name in CLASS_NAMES}
    latencies = await metrics(stack, "dispatch_*")
    assert set(latencies) == {"dispatch_latency_avg_seconds", "dispatch_latency_p99_seconds"}
    error = await rpc_error(metrics(stack, "completed_total", "bogus_metric"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bogus_metric" in (error.details() or "")


async def test_prometheus_series_carry_only_the_class_label(stack: Stack) -> None:
    ids = await run_one_good_and_one_bad(stack)
    families = await fetch_metrics(stack.daemon)
    ours = {name: samples for name, samples in families.items() if name.startswith(PREFIX)}
    for family in ("tasks_submitted", "tasks_completed", "tasks_failed", "queue_depth",
                   "tasks_running", "task_dispatch_latency_seconds", "task_duration_seconds"):
        assert PREFIX + family in ours, sorted(ours)
    for samples in ours.values():
        for sample in samples:
            # `le` is a histogram bucket's bound; the only other label is the class.
            assert set(sample.labels) <= {"class", "le"}, sample
            assert sample.labels["class"] in CLASS_NAMES, sample
            assert not any(task_id in value for value in sample.labels.values()
                           for task_id in ids)
    completed = families[PREFIX + "tasks_completed"]
    assert sample_value(completed, PREFIX + "tasks_completed_total", **{"class": "cpu_short"}) \
        >= 1
    figures = await metrics(stack, "completed.cpu_short", "queue_depth.held")
    assert sample_value(completed, PREFIX + "tasks_completed_total",
                        **{"class": "cpu_short"}) == figures["completed.cpu_short"]
    assert sample_value(families[PREFIX + "queue_depth"], PREFIX + "queue_depth",
                        **{"class": "held"}) == figures["queue_depth.held"]


async def test_health_shows_the_store_and_env_manager(stack: Stack) -> None:
    env_manager = f"env-manager {stack.env_manager_addr}"
    health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
    assert health.healthy and health.version
    assert dict(health.services) == {"store": "SERVING", env_manager: "SERVING",
                                     "orchestrator": "healthy", "grpc_server": "healthy"}
    probe = health_pb2_grpc.HealthStub(stack.daemon.channel())
    service = "orchestrator.v1.OrchestratorService"
    checked = await probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING

    await stack.stop_env_manager()
    try:
        health = await stack.stub.Health(pb.HealthRequest(), timeout=30)
        # Still accepting and storing work (as grpc.health.v1 "" says): healthy; the
        # env-manager endpoint's state is in `services`.
        assert health.healthy
        assert health.services["store"] == "SERVING"
        assert health.services["orchestrator"] == "healthy"
        assert health.services[env_manager].startswith("UNAVAILABLE"), health
    finally:
        await stack.start_env_manager()

    async def env_manager_back() -> bool:
        answer = await stack.stub.Health(pb.HealthRequest(), timeout=30)
        return bool(answer.healthy) and answer.services[env_manager] == "SERVING"
    await eventually(env_manager_back, "env-manager to be SERVING again")


ORIGINAL_NAMES = (
    "tasks_tracked_total", "tasks_pending", "tasks_running", "tasks_completed", "queue_depth",
    "workflows_total", "env_queue_depth", "gpu_wait_seconds", "env_error_rate",
    "runner_gpu_total", "orchestrator_concurrency_limit", "orchestrator_inflight_tasks",
    "queue_tasks_submitted_total", "queue_tasks_processed_total", "queue_tasks_completed_total",
    "events_published_total", "slurm_jobs_submitted_total", "slurm_jobs_completed_total",
    "slurm_jobs_failed_total",
)


async def test_get_metrics_answers_the_original_names(stack: Stack) -> None:
    before = await metrics(stack, *ORIGINAL_NAMES)
    assert set(before) == set(ORIGINAL_NAMES)
    everything = await metrics(stack)
    assert set(ORIGINAL_NAMES) <= set(everything) and "submitted_total" in everything
    held = new_id("orig-held")
    await submit(stack.stub, held, task_class="held")
    await run_one_good_and_one_bad(stack)
    after = await metrics(stack, *ORIGINAL_NAMES)
    grew = {name: after[name] - before[name] for name in ORIGINAL_NAMES}
    assert grew["tasks_tracked_total"] == 3
    assert grew["queue_tasks_submitted_total"] == 3
    assert grew["queue_tasks_processed_total"] == 2
    assert grew["queue_tasks_completed_total"] == grew["tasks_completed"] == 1
    assert grew["tasks_pending"] == grew["queue_depth"] == grew["env_queue_depth"] == 1
    assert after["tasks_running"] == after["orchestrator_inflight_tasks"] == 0
    assert grew["events_published_total"] >= 3  # each task's submit at least
    assert 0 < after["env_error_rate"] <= 1
    # Built-in classes (4 each) and held (0): cpu_short, cpu_long, gpu, gpu_slurm.
    status = await stack.stub.Health(pb.HealthRequest(), timeout=30)
    assert status.healthy
    assert after["orchestrator_concurrency_limit"] >= after["runner_gpu_total"] > 0
    assert after["slurm_jobs_submitted_total"] == 0  # no [slurm] here
    # Exact original names mix with ours; an unknown one is still refused.
    mixed = await metrics(stack, "tasks_running", "queue_depth.held", "slurm_jobs_*")
    assert set(mixed) == {"tasks_running", "queue_depth.held", "slurm_jobs_submitted_total",
                          "slurm_jobs_completed_total", "slurm_jobs_failed_total"}
    refused = await rpc_error(stack.stub.GetMetrics(
        pb.GetMetricsRequest(metric_names=["tasks_running", "no_such_metric"]), timeout=30))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_metric" in (refused.details() or "")
