"""A fake env-manager client for EnvManagerExecutor's unit tests: answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from agent_infra.client import EnvManagerClient
from agent_infra.client.env_manager_models import HardwareInfo, ResourceAvailability, TaskExecution
from agent_infra.client.errors import DeadlineExceeded, InfraUnavailable, InvalidArgument

HANG = "hang"  # execute_task waits until the calling task is cancelled
DOWN = "down"  # InfraUnavailable
SLOW = "slow"  # DeadlineExceeded
REFUSE = "refuse"  # InvalidArgument: a refusal
OK = "ok"  # a successful outcome
FAIL = "fail"  # the task's own failure: an outcome too


class FakeEnvManager(EnvManagerClient):
    """Answers from a script; records the task ids it was asked to cancel.

    GetResourceAvailability reports one slot, free or not (`free`); with `unreachable` set to
    DOWN or SLOW it raises InfraUnavailable or DeadlineExceeded instead (the endpoint does not
    answer). `probes` counts those calls."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.free = False
        self.unreachable: str | None = None
        self.probes = 0
        self.script: list[str] = []
        self.executed: list[str] = []
        self.cancelled: list[str] = []
        self.called = asyncio.Event()

    async def get_resource_availability(self, workload_class: str, *,
                                        timeout: float | None = None) -> ResourceAvailability:
        self.probes += 1
        if self.unreachable == DOWN:
            raise InfraUnavailable("connection refused", address=self.address)
        if self.unreachable == SLOW:
            raise DeadlineExceeded("deadline exceeded", address=self.address)
        return ResourceAvailability(self.free, 1, 0 if self.free else 1,
                                    HardwareInfo(1, 1 << 30, ()))

    async def execute_task(self, task_id: str, workload_class: str,
                           payload: Mapping[str, object], *, timeout_seconds: int = 0,
                           timeout: float | None = None, attempt: int = 0) -> TaskExecution:
        self.executed.append(task_id)
        self.called.set()
        step = self.script.pop(0)
        if step == HANG:
            await asyncio.Event().wait()
        if step == DOWN:
            raise InfraUnavailable("connection refused", address=self.address)
        if step == SLOW:
            raise DeadlineExceeded("deadline exceeded", address=self.address)
        if step == REFUSE:
            raise InvalidArgument("image not allowed", address=self.address)
        return TaskExecution(step == OK, {"exit_code": "0" if step == OK else "1"},
                             "" if step == OK else "exit code 1", 1.0)

    async def cancel_task(self, task_id: str, *, timeout: float | None = None) -> bool:
        self.cancelled.append(task_id)
        return True

    async def close(self) -> None:
        return None
