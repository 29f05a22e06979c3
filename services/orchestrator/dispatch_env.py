"""Dispatch to env-manager's ExecuteTask through the typed client, over one or more endpoints.

With several endpoints, a task goes to one reporting free capacity for its class (from
GetResourceAvailability, cached briefly). An endpoint that cannot be reached is a transient
failure: the scheduler retries the same execution id, which env-manager attaches to or answers
from its stored result, so a retry that reaches the same endpoint never runs the task twice. A
retry may go to another endpoint, though, while the first one (which may have got the call) still
runs the container.

Each execution id's endpoints are recorded: every one it was sent to since its last definitive
answer (an outcome, or a refusal), the first tried included. cancel() sends CancelTask to those
only. When nothing is recorded for the id (it was dispatched by an earlier orchestrator process,
or the bounded record forgot it) cancel() asks every endpoint; killing nothing is harmless.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence

from client import ConnectionConfig, EnvManagerClient
from client.errors import DeadlineExceeded, InfraError, InfraUnavailable
from services.runtime.errors import FailedPrecondition
from services.runtime.logs import get_logger

from .executor import Execution, ExecutionOutcome, TransientFailure
from .settings import EnvManagerEndpoint

log = get_logger("dispatch")

AVAILABILITY_TTL = 1.0
# Executions whose endpoints are remembered for cancel(). An entry normally goes when its
# execution gets an answer or is cancelled; ones that only ever failed transiently (then ended
# some other way) would stay, so beyond this many the least recently dispatched are forgotten.
DISPATCH_RECORD_LIMIT = 4096


class EnvManagerExecutor:
    def __init__(self, endpoints: Sequence[EnvManagerEndpoint], recheck_interval: float,
                 unsupported: dict[str, str] | None = None, *,
                 record_limit: int = DISPATCH_RECORD_LIMIT) -> None:
        self._clients = [EnvManagerClient(config=ConnectionConfig(
            address=e.address, ca_file=e.ca_file, cert_file=e.cert_file, key_file=e.key_file,
            token_file=e.token_file, connect_timeout=2.0)) for e in endpoints]
        self._round_robin = itertools.cycle(range(len(self._clients)))
        self._free: dict[tuple[int, str], tuple[float, int]] = {}
        self._reachable = asyncio.Event()
        self._reachable.set()
        self._recheck_interval = recheck_interval
        # Classes other executors own (gpu_slurm without Slurm): why they cannot run here.
        self._unsupported = dict(unsupported or {})
        # execution id -> the endpoints it was sent to since its last definitive answer, in the
        # order first tried; the entries least recently dispatched first.
        self._dispatched: OrderedDict[str, list[EnvManagerClient]] = OrderedDict()
        self._record_limit = record_limit

    def supports(self, task_class: str) -> str:
        return self._unsupported.get(task_class, "")

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        if reason := self.supports(execution.task_class):
            raise FailedPrecondition(reason)
        client = self._clients[await self._pick(execution.task_class)]
        # Recorded before the call goes out: a cancel may come while it is under way.
        self._record(execution.execution_id, client)
        try:
            answer = await client.execute_task(
                execution.execution_id, execution.task_class, execution.payload,
                timeout_seconds=execution.timeout_seconds)
        except (InfraUnavailable, DeadlineExceeded) as exc:
            # The call may have got through and the container may run: the endpoint stays
            # recorded (and so it does when the call is cancelled).
            self._reachable.clear()
            raise TransientFailure(f"env-manager {client.address}: {exc.details}") from None
        except InfraError as exc:
            # env-manager refused the task as given (bad payload, disallowed image...).
            self._dispatched.pop(execution.execution_id, None)
            return ExecutionOutcome(False, {}, f"env-manager refused the task: {exc.details}")
        self._dispatched.pop(execution.execution_id, None)
        self._reachable.set()
        return ExecutionOutcome(answer.success, dict(answer.result), answer.error)

    def _record(self, execution_id: str, client: EnvManagerClient) -> None:
        tried = self._dispatched.get(execution_id)
        if tried is None:
            self._dispatched[execution_id] = [client]
            while len(self._dispatched) > self._record_limit:
                self._dispatched.popitem(last=False)  # its cancel will ask every endpoint
            return
        self._dispatched.move_to_end(execution_id)
        if client not in tried:
            tried.append(client)

    async def cancel(self, execution_id: str, task_class: str) -> None:
        # The endpoints it was sent to, else (nothing recorded) every one: killing nothing is
        # harmless. The entry is used up: the scheduler cancels an execution once.
        targets = self._dispatched.pop(execution_id, None) or self._clients

        async def one(client: EnvManagerClient) -> None:
            try:
                await client.cancel_task(execution_id, timeout=10.0)
            except InfraError as exc:
                log.warning("cancel_not_delivered", execution_id=execution_id,
                            env_manager=client.address, error=exc.details)

        await asyncio.gather(*(one(client) for client in targets))

    async def _pick(self, task_class: str) -> int:
        if len(self._clients) == 1:
            return 0
        now = time.monotonic()

        async def free(index: int) -> int:
            cached = self._free.get((index, task_class))
            if cached and now - cached[0] < AVAILABILITY_TTL:
                return cached[1]
            try:
                found = await self._clients[index].get_resource_availability(
                    task_class, timeout=2.0)
                room = found.capacity - found.in_use if found.available else 0
            except InfraError:
                room = -1
            self._free[(index, task_class)] = (now, room)
            return room

        rooms = await asyncio.gather(*(free(i) for i in range(len(self._clients))))
        best = max(range(len(rooms)), key=lambda i: rooms[i])
        if rooms[best] > 0:
            self._free[(best, task_class)] = (now, rooms[best] - 1)
            return best
        # Nobody reports room: spread the waiting evenly (env-manager queues per class).
        return next(self._round_robin)

    async def wait_until_available(self, task_class: str) -> None:
        """While env-manager is unreachable, hold dispatching (tasks wait, queued) and re-check."""
        while not self._reachable.is_set():
            if await self._any_answers():
                self._reachable.set()
                log.info("env_manager_back")
                return
            try:
                await asyncio.wait_for(self._reachable.wait(), self._recheck_interval)
            except TimeoutError:
                continue

    async def _any_answers(self) -> bool:
        states = await self.health()
        return any(state == "SERVING" for state in states.values())

    async def health(self) -> dict[str, str]:
        async def one(client: EnvManagerClient) -> str:
            try:
                await client.connect()
                await client.get_resource_availability("cpu_short", timeout=2.0)
            except (InfraUnavailable, DeadlineExceeded) as exc:
                # A down endpoint shows as either: the client retries UNAVAILABLE until the
                # deadline.
                return f"UNAVAILABLE: {exc.details}"
            except InfraError:
                return "SERVING"  # it answered, even if it knows no such class
            return "SERVING"

        states = await asyncio.gather(*(one(c) for c in self._clients))
        return {f"env-manager {c.address}": s for c, s in zip(self._clients, states, strict=True)}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients))
