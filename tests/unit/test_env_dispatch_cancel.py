"""Which env-manager endpoints EnvManagerExecutor.cancel asks, with fake clients: the ones an
execution was sent to since its last definitive answer, else (nothing recorded) every one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from agent_infra.orchestrator.executors import env_manager as dispatch_env
from agent_infra.orchestrator.executors.env_manager import EnvManagerExecutor
from agent_infra.orchestrator.executors.protocol import Execution, TransientFailure
from agent_infra.orchestrator.settings import EnvManagerEndpoint

from tests.env_dispatch_fakes import DOWN, FAIL, HANG, OK, REFUSE, SLOW, FakeEnvManager


class Harness:
    def __init__(self, executor: EnvManagerExecutor, fakes: Sequence[FakeEnvManager]) -> None:
        self.executor = executor
        self.fakes = list(fakes)

    async def dispatch(self, execution_id: str, to: int, step: str) -> None:
        """One execute() of the execution, steered to fakes[to], which answers with `step`:
        it is the only one reporting a free slot, and the only one answering at all (so a
        retry leaves the endpoint its earlier attempt went to, when that is another one)."""
        for index, fake in enumerate(self.fakes):
            fake.free = index == to
            fake.unreachable = None if index == to else DOWN
        self.fakes[to].script.append(step)
        await self.executor.execute(Execution(execution_id, "cpu_short", {}, 60))

    async def transient(self, execution_id: str, to: int, step: str = DOWN) -> None:
        with pytest.raises(TransientFailure):
            await self.dispatch(execution_id, to, step)

    async def cancel_targets(self, execution_id: str) -> list[int]:
        """Cancel the execution; the indexes of the fakes that got its CancelTask (each once)."""
        before = [fake.cancelled.count(execution_id) for fake in self.fakes]
        await self.executor.cancel(execution_id, "cpu_short")
        got = [fake.cancelled.count(execution_id) - n for fake, n in zip(
            self.fakes, before, strict=True)]
        assert set(got) <= {0, 1}, got
        return [index for index, count in enumerate(got) if count]


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    return await _harness(monkeypatch)


async def _harness(monkeypatch: pytest.MonkeyPatch, *, endpoints: int = 3,
                   record_limit: int = dispatch_env.DISPATCH_RECORD_LIMIT) -> Harness:
    # Availability read afresh at every dispatch, so `free` steers each one.
    monkeypatch.setattr(dispatch_env, "AVAILABILITY_TTL", 0.0)
    addresses = [f"127.0.0.1:{50100 + i}" for i in range(endpoints)]
    executor = EnvManagerExecutor([EnvManagerEndpoint(address=a) for a in addresses], 0.1,
                                  record_limit=record_limit)
    fakes = [FakeEnvManager(a) for a in addresses]
    executor._clients = list(fakes)
    return Harness(executor, fakes)


ALL = [0, 1, 2]


async def test_cancel_reaches_only_the_endpoint_running_it(harness: Harness) -> None:
    running = asyncio.ensure_future(harness.dispatch("e1", 1, HANG))
    await _reached(harness.fakes[1], "e1")
    assert await harness.cancel_targets("e1") == [1]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # The entry was used up: a second cancel knows nothing and asks everyone.
    assert await harness.cancel_targets("e1") == ALL


async def test_a_cancelled_call_keeps_its_endpoint(harness: Harness) -> None:
    running = asyncio.ensure_future(harness.dispatch("e1", 2, HANG))
    await _reached(harness.fakes[2], "e1")
    running.cancel()  # the scheduler cancels the attempt before it cancels the execution
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await harness.cancel_targets("e1") == [2]


@pytest.mark.parametrize("failure", [DOWN, SLOW])
async def test_every_endpoint_tried_since_a_transient_failure(harness: Harness,
                                                              failure: str) -> None:
    await harness.transient("e1", 0, failure)
    running = asyncio.ensure_future(harness.dispatch("e1", 2, HANG))
    await _reached(harness.fakes[2], "e1")
    assert await harness.cancel_targets("e1") == [0, 2]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_retry_to_the_same_endpoint_is_asked_once(harness: Harness) -> None:
    await harness.transient("e1", 1)
    await harness.transient("e1", 1, SLOW)
    assert await harness.cancel_targets("e1") == [1]


@pytest.mark.parametrize("answer", [OK, FAIL, REFUSE])
async def test_a_definitive_answer_ends_the_record(harness: Harness, answer: str) -> None:
    await harness.transient("e1", 0)
    await harness.dispatch("e1", 1, answer)
    assert await harness.cancel_targets("e1") == ALL
    # A later dispatch of the same id starts a record of its own.
    await harness.transient("e1", 2)
    assert await harness.cancel_targets("e1") == [2]


async def test_executions_are_recorded_apart(harness: Harness) -> None:
    await harness.transient("e1", 0)
    await harness.transient("e2", 1)
    await harness.dispatch("e3", 2, OK)
    assert await harness.cancel_targets("e2") == [1]
    assert await harness.cancel_targets("e1") == [0]
    assert await harness.cancel_targets("e3") == ALL


async def test_nothing_recorded_asks_every_endpoint(harness: Harness) -> None:
    assert await harness.cancel_targets("never-dispatched") == ALL


async def test_the_record_is_bounded_least_recently_dispatched_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    harness = await _harness(monkeypatch, record_limit=3)
    for index, execution_id in enumerate(["e1", "e2", "e3"]):
        await harness.transient(execution_id, index)
    await harness.transient("e1", 1)  # dispatched again: now the most recent
    await harness.transient("e4", 2)  # one too many: e2, the least recent, is forgotten
    assert len(harness.executor._dispatched) == 3
    assert await harness.cancel_targets("e2") == ALL
    assert await harness.cancel_targets("e1") == [0, 1]
    assert await harness.cancel_targets("e3") == [2]
    assert await harness.cancel_targets("e4") == [2]
    assert not harness.executor._dispatched


async def test_many_transient_only_executions_stay_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    harness = await _harness(monkeypatch, endpoints=2, record_limit=50)
    for n in range(500):
        await harness.transient(f"e{n}", n % 2)
    assert len(harness.executor._dispatched) == 50
    assert await harness.cancel_targets("e0") == [0, 1]
    assert await harness.cancel_targets("e499") == [1]


async def _reached(fake: FakeEnvManager, execution_id: str) -> None:
    """Until the fake has got the execution's ExecuteTask."""
    async with asyncio.timeout(5):
        await fake.called.wait()
    assert fake.executed == [execution_id]
