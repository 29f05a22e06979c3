"""`warm` and `warm_max_age` of a workload class: defaults and clear errors."""

from __future__ import annotations

from typing import Any

import pytest
from agent_infra.env_manager.tasks.workloads import DEFAULT_WARM_MAX_AGE, WorkloadClass
from pydantic import ValidationError


def test_defaults_keep_no_warm_containers() -> None:
    workload = WorkloadClass()
    assert workload.warm == 0 and workload.warm_max_age == DEFAULT_WARM_MAX_AGE
    assert WorkloadClass(concurrency=4, warm=4, warm_max_age="90s").warm_max_age == 90.0
    # A disabled class may keep its warm setting: it keeps none until enabled again.
    assert WorkloadClass(concurrency=0, warm=2).warm == 2


@pytest.mark.parametrize(("fields", "message"), [
    ({"concurrency": 2, "warm": 3}, "warm (3) must not exceed concurrency (2)"),
    ({"warm": -1}, "warm"),
    ({"warm": 65}, "warm"),
    ({"warm": "many"}, "warm"),
    ({"warm_max_age": "0s"}, "warm_max_age"),
    ({"warm_max_age": "2d"}, "warm_max_age"),
    ({"warm_max_age": "soon"}, "warm_max_age"),
])
def test_bad_values_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WorkloadClass(**fields)


@pytest.mark.parametrize(("warm", "concurrency", "ready", "busy", "sandboxes", "wanted"), [
    (2, 4, 0, 0, 0, True),
    (2, 4, 2, 0, 0, False),  # full
    (2, 4, 1, 2, 0, True),  # 1 ready + 2 running < 4
    (2, 4, 1, 3, 0, False),  # 1 ready + 3 running: the class's concurrency is spent
    (2, 4, 1, 2, 1, False),  # ... also when a claimer's containers (sandboxes) count
    (2, 0, 0, 0, 0, False),  # disabled
])
def test_the_pool_refills_only_within_the_class_budget(
        warm: int, concurrency: int, ready: int, busy: int, sandboxes: int,
        wanted: bool) -> None:
    from collections import deque

    from agent_infra.env_manager.docker.engine import DockerEngine
    from agent_infra.env_manager.settings import RetrySettings
    from agent_infra.env_manager.tasks.warm import WarmPool

    pool = WarmPool(DockerEngine("unix:///nonexistent", RetrySettings()), "s", lambda _c: busy)
    pool.count_busy(lambda _c: sandboxes)
    pool.configure({"c": WorkloadClass(warm=warm, concurrency=concurrency)}, 1024)
    pool._ready["c"] = deque([object()] * ready)  # type: ignore[list-item]
    assert pool._wanted("c") is wanted
