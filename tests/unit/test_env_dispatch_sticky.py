"""Where EnvManagerExecutor sends a retry of an execution, with fake clients: back to the
endpoint its latest attempt went to while that one answers, whatever capacity it reports; else
(it does not answer) wherever a first dispatch would go."""

from __future__ import annotations

import pytest
from agent_infra.orchestrator.executors import env_manager as dispatch_env
from agent_infra.orchestrator.executors.env_manager import EnvManagerExecutor
from agent_infra.orchestrator.executors.protocol import Execution, TransientFailure
from agent_infra.orchestrator.settings import EnvManagerEndpoint

from tests.env_dispatch_fakes import DOWN, OK, SLOW, FakeEnvManager


class Endpoints:
    """An executor over fakes whose availability each test sets itself; each execute() is
    answered by whichever fake it reaches, with the step queued for every fake."""

    def __init__(self, count: int) -> None:
        addresses = [f"127.0.0.1:{50200 + i}" for i in range(count)]
        self.executor = EnvManagerExecutor(
            [EnvManagerEndpoint(address=a) for a in addresses], 0.1)
        self.fakes = [FakeEnvManager(a) for a in addresses]
        self.executor._clients = list(self.fakes)

    def room(self, *free: int) -> None:
        """Only these fakes report a free slot (the others report theirs taken)."""
        for index, fake in enumerate(self.fakes):
            fake.free = index in free

    async def attempt(self, execution_id: str, step: str) -> int:
        """One execute() of the execution; the index of the fake it reached. Every fake is
        scripted to answer with `step`; the unused scripts are dropped afterwards."""
        before = [len(fake.executed) for fake in self.fakes]
        for fake in self.fakes:
            fake.script.append(step)
        try:
            if step in (DOWN, SLOW):
                with pytest.raises(TransientFailure):
                    await self.execute(execution_id)
            else:
                await self.execute(execution_id)
        finally:
            reached = [i for i, fake in enumerate(self.fakes)
                       if len(fake.executed) > before[i]]
            for fake in self.fakes:
                fake.script.clear()
        assert len(reached) == 1, reached
        assert self.fakes[reached[0]].executed[-1] == execution_id
        return reached[0]

    async def execute(self, execution_id: str) -> None:
        await self.executor.execute(Execution(execution_id, "cpu_short", {}, 60))

    def probes(self) -> list[int]:
        return [fake.probes for fake in self.fakes]


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # Availability read afresh at every dispatch unless a test says otherwise.
    monkeypatch.setattr(dispatch_env, "AVAILABILITY_TTL", 0.0)


@pytest.mark.parametrize("failure", [DOWN, SLOW])
async def test_a_retry_goes_back_to_its_endpoint_while_it_answers(failure: str) -> None:
    endpoints = Endpoints(3)
    endpoints.room(1)
    assert await endpoints.attempt("e1", failure) == 1
    # Now endpoint 1 reports no room and the others do: the retry still goes to 1, which
    # attaches to the run it may have, and needs no slot of its own.
    endpoints.room(0, 2)
    assert await endpoints.attempt("e1", failure) == 1
    assert await endpoints.attempt("e1", OK) == 1
    assert [len(fake.executed) for fake in endpoints.fakes] == [0, 3, 0]


async def test_capacity_is_not_asked_of_the_others_on_a_sticky_retry() -> None:
    endpoints = Endpoints(3)
    endpoints.room(2)
    assert await endpoints.attempt("e1", DOWN) == 2
    before = endpoints.probes()
    endpoints.room()  # nobody has room
    assert await endpoints.attempt("e1", OK) == 2
    # Only the sticky endpoint was probed; no round robin, no capacity comparison.
    assert [n - b for n, b in zip(endpoints.probes(), before, strict=True)] == [0, 0, 1]


@pytest.mark.parametrize("silence", [DOWN, SLOW])
async def test_a_retry_whose_endpoint_does_not_answer_is_placed_afresh(silence: str) -> None:
    endpoints = Endpoints(3)
    endpoints.room(0)
    assert await endpoints.attempt("e1", DOWN) == 0
    endpoints.fakes[0].unreachable = silence
    endpoints.room(0, 2)  # endpoint 0 would have room, but does not answer
    assert await endpoints.attempt("e1", DOWN) == 2
    # From there on the latest endpoint (2) is the sticky one, even with 0 answering again.
    endpoints.fakes[0].unreachable = None
    endpoints.room(0)
    assert await endpoints.attempt("e1", OK) == 2
    # Both got the execution: cancel would have asked both (checked before the answer ended
    # the record in test_env_dispatch_cancel); the answer ended it here.
    assert not endpoints.executor._dispatched


async def test_fallback_without_any_room_is_round_robin() -> None:
    endpoints = Endpoints(2)
    endpoints.room()
    first = await endpoints.attempt("e1", DOWN)
    endpoints.fakes[first].unreachable = DOWN
    # Round robin carries on from the first placement, so it lands on the other endpoint.
    assert await endpoints.attempt("e1", DOWN) == 1 - first


async def test_cancel_after_a_fallback_asks_every_endpoint_tried() -> None:
    endpoints = Endpoints(3)
    endpoints.room(1)
    assert await endpoints.attempt("e1", SLOW) == 1
    endpoints.fakes[1].unreachable = DOWN
    endpoints.room(0)
    assert await endpoints.attempt("e1", DOWN) == 0
    await endpoints.executor.cancel("e1", "cpu_short")
    assert [fake.cancelled for fake in endpoints.fakes] == [["e1"], ["e1"], []]


async def test_a_fresh_cached_answer_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch_env, "AVAILABILITY_TTL", 3600.0)
    endpoints = Endpoints(3)
    endpoints.room(1)
    assert await endpoints.attempt("e1", DOWN) == 1  # every endpoint probed once, cached
    assert endpoints.probes() == [1, 1, 1]
    endpoints.fakes[1].unreachable = DOWN  # not noticed: the cached answer is fresh
    assert await endpoints.attempt("e1", DOWN) == 1
    assert endpoints.probes() == [1, 1, 1]


async def test_a_fresh_cached_silence_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch_env, "AVAILABILITY_TTL", 3600.0)
    endpoints = Endpoints(3)
    endpoints.room(1)
    assert await endpoints.attempt("e1", DOWN) == 1
    # e1's endpoint stops answering, and a first dispatch of e2 (asking afresh) caches that.
    endpoints.executor._free.clear()
    endpoints.fakes[1].unreachable = DOWN
    endpoints.room(2)
    assert await endpoints.attempt("e2", OK) == 2
    assert endpoints.probes() == [2, 2, 2]
    # e1's retry reads the cached silence (no probe): it goes where a first dispatch would
    # (nobody has a cached free slot left: round robin), not back to endpoint 1.
    endpoints.fakes[1].unreachable = None
    assert await endpoints.attempt("e1", OK) != 1
    assert endpoints.probes() == [2, 2, 2]


async def test_first_dispatches_go_by_room_then_round_robin() -> None:
    endpoints = Endpoints(3)
    endpoints.room(2)
    assert await endpoints.attempt("e1", OK) == 2
    endpoints.room(0)
    assert await endpoints.attempt("e2", DOWN) == 0
    # Nobody reports room: round robin, whatever the other executions' records say.
    endpoints.room()
    assert [await endpoints.attempt(f"n{i}", OK) for i in range(3)] == [0, 1, 2]


async def test_a_definitive_answer_ends_stickiness() -> None:
    endpoints = Endpoints(3)
    endpoints.room(0)
    assert await endpoints.attempt("e1", DOWN) == 0
    assert await endpoints.attempt("e1", OK) == 0
    # The same id dispatched again (nothing recorded now) goes by room, like any first one.
    endpoints.room(1)
    assert await endpoints.attempt("e1", OK) == 1


async def test_a_forgotten_record_is_placed_afresh() -> None:
    endpoints = Endpoints(2)
    endpoints.executor._record_limit = 1
    endpoints.room(0)
    assert await endpoints.attempt("e1", DOWN) == 0
    endpoints.room(1)
    assert await endpoints.attempt("e2", DOWN) == 1  # e1's record is evicted
    assert await endpoints.attempt("e1", DOWN) == 1


@pytest.mark.parametrize("silence", [None, DOWN])
async def test_a_single_endpoint_is_never_asked(silence: str | None) -> None:
    endpoints = Endpoints(1)
    endpoints.fakes[0].unreachable = silence
    assert await endpoints.attempt("e1", DOWN) == 0
    assert await endpoints.attempt("e1", SLOW) == 0
    assert await endpoints.attempt("e1", OK) == 0
    assert endpoints.probes() == [0]


async def test_the_endpoints_of_an_execution_in_flight_are_told_latest_last() -> None:
    endpoints = Endpoints(3)
    endpoints.room(0)
    assert await endpoints.attempt("e1", DOWN) == 0
    endpoints.fakes[0].unreachable = DOWN
    endpoints.room(2)
    assert await endpoints.attempt("e1", DOWN) == 2
    address = [fake.address for fake in endpoints.fakes]
    assert endpoints.executor.endpoints("e1", "cpu_short") == [address[0], address[2]]
    endpoints.fakes[0].unreachable = None
    assert await endpoints.attempt("e1", OK) == 2
    assert endpoints.executor.endpoints("e1", "cpu_short") == []  # answered: none in flight
