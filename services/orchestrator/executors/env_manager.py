"""Dispatch to env-manager's ExecuteTask through the typed client, over one or more endpoints.

Which endpoint an attempt goes to (with a single endpoint: always that one, nothing asked first):

- An execution id with nothing recorded (its first dispatch): the endpoint reporting the most
  free slots for its class (GetResourceAvailability, each endpoint's answer cached for
  AVAILABILITY_TTL s); when none reports a free slot, the next one round robin (env-manager
  queues per class).
- An execution id with a record (an earlier attempt went out and got no definitive answer: the
  scheduler retries the same id after a transient failure): the endpoint the latest attempt was
  sent to, whatever capacity it reports, provided it answers. It answers when a
  GetResourceAvailability for the class returns within PROBE_TIMEOUT s (an error status other
  than UNAVAILABLE or DEADLINE_EXCEEDED counts too: the endpoint is up), or when such an answer
  is cached and younger than AVAILABILITY_TTL s. Capacity does not matter: that endpoint knows
  the id, and a repeat ExecuteTask attaches to its run (running, or still queued there) or
  returns its stored result, so it takes no second slot and never runs the task twice.
- When that endpoint does not answer (no reply within PROBE_TIMEOUT s, or a cached "no reply"
  younger than AVAILABILITY_TTL s), the attempt is placed as a first dispatch is (and
  `retry_moved` is logged). Availability wins over exactly-once here: the unreachable endpoint
  may still run the task (or run it when it is back, if the call reached it) while another
  endpoint runs it again.

A record lasts until the execution's definitive answer, its cancel, or eviction (the bounded
record below), and only within this orchestrator process: a task resumed after a restart, or
retried after its record was evicted, is placed as a first dispatch.

Each execution id's endpoints are recorded: every one it was sent to since its last definitive
answer (an outcome, or a refusal), the first tried included, and which one was sent the latest
attempt. cancel() sends CancelTask to those only. When nothing is recorded for the id (it was
dispatched by an earlier orchestrator process, or the bounded record forgot it) cancel() asks
every endpoint; killing nothing is harmless.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent_infra.client import ConnectionConfig, EnvManagerClient
from agent_infra.client.errors import DeadlineExceeded, InfraError, InfraUnavailable
from agent_infra.runtime.errors import DomainError, FailedPrecondition, Unavailable, shorten
from agent_infra.runtime.logs import get_logger
from agent_infra.runtime.status import error_for_status

from ..model import DEFAULT_CLASS
from ..settings import EnvManagerEndpoint
from .contracts import ContractCache
from .protocol import Execution, ExecutionOutcome, TransientFailure, wait_until_reachable

log = get_logger("dispatch")

AVAILABILITY_TTL = 1.0
# How long GetResourceAvailability may take before its endpoint counts as not answering.
PROBE_TIMEOUT = 2.0
# A cached availability: the endpoint did not answer.
NO_ANSWER = -1
# Executions whose endpoints are remembered for cancel(). An entry normally goes when its
# execution gets an answer or is cancelled; ones that only ever failed transiently (then ended
# some other way) would stay, so beyond this many the least recently dispatched are forgotten.
DISPATCH_RECORD_LIMIT = 4096


@dataclass
class _Dispatched:
    """Where an execution was sent since its last definitive answer."""

    tried: list[EnvManagerClient]  # in the order first tried
    latest: int  # index of the endpoint the latest attempt went to


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
        # execution id -> the endpoints it was sent to since its last definitive answer; the
        # entries least recently dispatched first.
        self._dispatched: OrderedDict[str, _Dispatched] = OrderedDict()
        self._record_limit = record_limit
        self.contracts = ContractCache(self._clients)

    @property
    def clients(self) -> tuple[EnvManagerClient, ...]:
        """One client per endpoint, in configuration order (the console reads the stack
        through them: the same channels, TLS and token)."""
        return tuple(self._clients)

    async def check_payload(self, task_class: str, payload: Mapping[str, str]) -> None:
        """InvalidArgument for a payload every endpoint's contract refuses (contracts.py)."""
        if self.supports(task_class):
            return
        self.contracts.start()
        await self.contracts.ready(PROBE_TIMEOUT)
        self.contracts.check(task_class, payload)

    def supports(self, task_class: str) -> str:
        return self._unsupported.get(task_class, "")

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        if reason := self.supports(execution.task_class):
            raise FailedPrecondition(reason)
        index = await self._place(execution)
        client = self._clients[index]
        # Recorded before the call goes out: a cancel may come while it is under way.
        self._record(execution.execution_id, index)
        try:
            answer = await client.execute_task(
                execution.execution_id, execution.task_class, execution.payload,
                timeout_seconds=execution.timeout_seconds, attempt=execution.attempt)
        except (InfraUnavailable, DeadlineExceeded) as exc:
            # The call may have got through and the container may run: the endpoint stays
            # recorded (and so it does when the call is cancelled), for cancel() and as where
            # the retry goes back to.
            self._reachable.clear()
            raise TransientFailure(f"env-manager {client.address}: {exc.details}") from None
        except InfraError as exc:
            # env-manager refused the task as given (bad payload, disallowed image...).
            self._dispatched.pop(execution.execution_id, None)
            return ExecutionOutcome(False, {}, f"env-manager refused the task: {exc.details}")
        self._dispatched.pop(execution.execution_id, None)
        self._reachable.set()
        return ExecutionOutcome(answer.success, dict(answer.result), answer.error)

    async def _place(self, execution: Execution) -> int:
        """The index of the endpoint this attempt goes to (the rule: the module docstring)."""
        if len(self._clients) == 1:
            return 0
        record = self._dispatched.get(execution.execution_id)
        if record is None:
            return await self._pick(execution.task_class)
        if await self._free_slots(record.latest, execution.task_class) != NO_ANSWER:
            return record.latest
        # Availability over exactly-once: the one not answering may still run the task.
        log.warning("retry_moved", execution_id=execution.execution_id,
                    env_manager=self._clients[record.latest].address)
        return await self._pick(execution.task_class)

    async def _free_slots(self, index: int, task_class: str, now: float | None = None) -> int:
        """`_ask_free_slots`, or its answer cached less than AVAILABILITY_TTL s before `now`."""
        now = time.monotonic() if now is None else now
        cached = self._free.get((index, task_class))
        if cached and now - cached[0] < AVAILABILITY_TTL:
            return cached[1]
        room = await self._ask_free_slots(index, task_class)
        self._free[(index, task_class)] = (now, room)
        return room

    async def _ask_free_slots(self, index: int, task_class: str) -> int:
        """Free slots the endpoint reports for the class: 0 when it reports none or answers with
        an error (it is up, but no place for this class), NO_ANSWER when it does not answer."""
        try:
            found = await self._clients[index].get_resource_availability(
                task_class, timeout=PROBE_TIMEOUT)
        except (InfraUnavailable, DeadlineExceeded):
            return NO_ANSWER
        except InfraError:
            return 0
        self.contracts.update(index, found.workload_contracts)
        return max(found.capacity - found.in_use, 0) if found.available else 0

    def _record(self, execution_id: str, index: int) -> None:
        client = self._clients[index]
        record = self._dispatched.get(execution_id)
        if record is None:
            self._dispatched[execution_id] = _Dispatched([client], index)
            while len(self._dispatched) > self._record_limit:
                self._dispatched.popitem(last=False)  # its cancel will ask every endpoint
            return
        self._dispatched.move_to_end(execution_id)
        record.latest = index
        if client not in record.tried:
            record.tried.append(client)

    def endpoints(self, execution_id: str, task_class: str) -> list[str]:
        """The addresses an execution in flight was sent to, the latest last ([] once it has
        its answer: the record goes then). For the web console's task page."""
        record = self._dispatched.get(execution_id)
        if record is None:
            return []
        latest = self._clients[record.latest]
        return [c.address for c in record.tried if c is not latest] + [latest.address]

    async def cancel(self, execution_id: str, task_class: str) -> None:
        # The endpoints it was sent to, else (nothing recorded) every one: killing nothing is
        # harmless. The entry is used up: the scheduler cancels an execution once.
        record = self._dispatched.pop(execution_id, None)
        targets = record.tried if record is not None else self._clients

        async def one(client: EnvManagerClient) -> None:
            try:
                await client.cancel_task(execution_id, timeout=10.0)
            except InfraError as exc:
                log.warning("cancel_not_delivered", execution_id=execution_id,
                            env_manager=client.address, error=exc.details)

        await asyncio.gather(*(one(client) for client in targets))

    async def _pick(self, task_class: str) -> int:
        """Where a first dispatch goes: the most free slots, else round robin."""
        now = time.monotonic()
        rooms = await asyncio.gather(*(self._free_slots(i, task_class, now)
                                       for i in range(len(self._clients))))
        best = max(range(len(rooms)), key=lambda i: rooms[i])
        if rooms[best] > 0:
            self._free[(best, task_class)] = (now, rooms[best] - 1)
            return best
        # Nobody reports room: spread the waiting evenly (env-manager queues per class).
        return next(self._round_robin)

    async def wait_until_available(self, task_class: str) -> None:
        """While env-manager is unreachable, hold dispatching (tasks wait, queued) and re-check."""
        if await wait_until_reachable(self._reachable, self._any_answers,
                                      lambda: self._recheck_interval):
            log.info("env_manager_back")

    async def _any_answers(self) -> bool:
        states = await self.health()
        return any(state == "SERVING" for state in states.values())

    async def health(self) -> dict[str, str]:
        async def one(client: EnvManagerClient) -> str:
            try:
                await client.connect()
                await client.get_resource_availability(DEFAULT_CLASS, timeout=PROBE_TIMEOUT)
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
        await self.contracts.close()
        await asyncio.gather(*(client.close() for client in self._clients))


def env_manager_error(exc: InfraError) -> DomainError:
    """What an env-manager answered, as the domain error of the same status, in its words (cut
    to size); one that can't be reached, or refuses our credentials, is Unavailable."""
    cls = error_for_status(exc.code)
    if cls is None or cls is Unavailable:
        return Unavailable(shorten(f"env-manager {exc.address} unavailable: {exc.details}"))
    return cls(shorten(exc.details))
