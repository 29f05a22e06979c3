"""HealthState: "" and the app's services follow readiness; each dependency is a grpc.health.v1
name of its own. Served by a real in-process gRPC server, so Check and Watch are the real thing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from agent_infra.runtime.daemon import HealthState
from agent_infra.runtime.notify import SystemdNotifier
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
APP = "test.v1.AppService"
ENV = "env-manager 127.0.0.1:50100"


class Served:
    def __init__(self, state: HealthState, stub: health_pb2_grpc.HealthStub) -> None:
        self.state = state
        self.stub = stub

    async def check(self, service: str) -> int:
        answer = await self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(answer.status)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    servicer = health.aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(HealthState(servicer, [APP], SystemdNotifier({}), "ready"),
                     health_pb2_grpc.HealthStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


async def test_dependencies_have_their_own_names(served: Served) -> None:
    await served.state.set(True, "serving")
    await served.state.set_dependencies({"store": True, ENV: False})
    assert await served.check("") == SERVING
    assert await served.check(APP) == SERVING
    assert await served.check("store") == SERVING
    assert await served.check(ENV) == NOT_SERVING
    assert served.state.serving  # a down dependency never holds back the daemon's own state
    assert served.state.dependencies == {"store": True, ENV: False}

    await served.state.set_dependencies({"store": True, ENV: True})
    assert await served.check(ENV) == SERVING

    # readiness alone decides "" and the app's names; the dependencies keep theirs.
    await served.state.set(False, "store not writable")
    assert (await served.check(""), await served.check(APP)) == (NOT_SERVING, NOT_SERVING)
    assert await served.check(ENV) == SERVING


async def test_unknown_names_are_not_found(served: Served) -> None:
    await served.state.set(True)
    await served.state.set_dependencies({ENV: True})
    for name in ("no.such.Service", "env-manager", "slurm"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.check(name)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_dependency_may_not_override_the_daemons_own_names(served: Served) -> None:
    await served.state.set(True)
    await served.state.set_dependencies({"": False, APP: False, "store": False})
    assert (await served.check(""), await served.check(APP)) == (SERVING, SERVING)
    assert await served.check("store") == NOT_SERVING
    assert served.state.dependencies == {"store": False}


async def test_a_dropped_dependency_is_unknown(served: Served) -> None:
    await served.state.set_dependencies({"slurm": True, ENV: True})
    await served.state.set_dependencies({ENV: True})
    assert await served.check("slurm") == UNKNOWN
    assert served.state.dependencies == {ENV: True}


async def test_watch_sees_a_dependency_change(served: Served) -> None:
    await served.state.set_dependencies({ENV: False})
    call = served.stub.Watch(health_pb2.HealthCheckRequest(service=ENV), timeout=10)
    try:
        assert (await call.read()).status == NOT_SERVING
        await served.state.set_dependencies({ENV: True})
        assert (await call.read()).status == SERVING
        await served.state.set_dependencies({ENV: False})
        assert (await call.read()).status == NOT_SERVING
    finally:
        call.cancel()


async def test_shutdown_turns_everything_not_serving_for_good(served: Served) -> None:
    await served.state.set(True)
    await served.state.set_dependencies({ENV: True})
    await served.state.shut_down()
    # Late checks (a health loop finishing its round) change nothing any more.
    await served.state.set(True)
    await served.state.set_dependencies({ENV: True})
    await asyncio.sleep(0)
    for name in ("", APP, ENV):
        assert await served.check(name) == NOT_SERVING
    assert not served.state.serving
