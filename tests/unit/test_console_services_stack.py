"""The console's view of the env-manager stack (console/services_stack.py), without Docker:
an endpoint nobody listens on, and the mapping of what env-manager answers."""

from __future__ import annotations

import asyncio

import pytest
from agent_infra.client import ConnectionConfig, EnvManagerClient
from agent_infra.client.env_manager_models import ResourceUsage, ServiceStatus
from agent_infra.client.errors import InfraError, InfraUnavailable
from agent_infra.client.errors import NotFound as ClientNotFound
from agent_infra.orchestrator.console import services_feed, services_stack
from agent_infra.orchestrator.console.services_feed import StatusFeed
from agent_infra.orchestrator.console.services_stack import ServicesStack
from agent_infra.orchestrator.executors.env_manager import env_manager_error
from agent_infra.runtime.errors import InvalidArgument, NotFound, Unavailable
from agent_infra.runtime.status import STATUSES

from tests.daemon_support import free_port


def nobody_listening() -> EnvManagerClient:
    return EnvManagerClient(config=ConnectionConfig(address=f"127.0.0.1:{free_port()}",
                                                    connect_timeout=0.5))


async def test_unreachable_endpoint_is_unavailable_never_an_error() -> None:
    client = nobody_listening()
    stack = ServicesStack([client])
    try:
        [endpoint] = await stack.status()
        assert endpoint.state == "unavailable" and endpoint.services == ()
        assert endpoint.address == client.address and endpoint.error
        with pytest.raises(Unavailable, match=client.address):
            await stack.stop(0, "web")
        with pytest.raises(Unavailable):
            await stack.restart(0, "web")
        with pytest.raises(Unavailable):
            async for _ in stack.follow_logs(0, "web"):
                pass
    finally:
        await client.close()


async def test_bad_endpoint_and_service_names_are_refused_before_any_call() -> None:
    client = nobody_listening()
    stack = ServicesStack([client])
    try:
        with pytest.raises(NotFound, match="endpoint 3 not found"):
            await stack.start(3, "web")
        for name in ("", "Web", "../x", "a b", "x" * 64):
            with pytest.raises(InvalidArgument, match="service"):
                await stack.restart(0, name)
    finally:
        await client.close()
    assert await ServicesStack([]).status() == []


def test_errors_keep_their_meaning() -> None:
    missing = env_manager_error(
        ClientNotFound("unknown service 'x'", address="127.0.0.1:1"))
    assert isinstance(missing, NotFound) and "unknown service 'x'" in str(missing)
    down = env_manager_error(InfraUnavailable("refused", address="127.0.0.1:1"))
    assert isinstance(down, Unavailable) and "127.0.0.1:1 unavailable: refused" in str(down)


def test_service_view_summarises_state_health_and_usage() -> None:
    running = ServiceStatus("web", "running", "0123456789abcdef", (8080,),
                            {"healthy": "true", "message": "HTTP 200"}, 1700000000,
                            ResourceUsage(12.345, 1048576, 0, 0))
    view = services_stack.service_view(running)
    assert (view.health, view.cpu_percent, view.memory_bytes) == ("healthy", 12.3, 1048576)
    assert view.container_id == "0123456789ab" and view.health_detail == "message: HTTP 200"
    stopped = services_stack.service_view(ServiceStatus("web", "stopped", "", (), {}, 0, None))
    assert (stopped.health, stopped.cpu_percent, stopped.memory_bytes) == ("", None, None)
    plain = services_stack.service_view(ServiceStatus("db", "running", "c", (), {}, 1, None))
    assert plain.health == "no check"


async def test_one_status_poller_feeds_every_listener_and_stops_with_the_last() -> None:
    client = nobody_listening()
    stack = ServicesStack([client])
    asked = 0
    real_status = stack.status

    async def counted() -> list[services_stack.EndpointView]:
        nonlocal asked
        asked += 1
        return await real_status()

    stack.status = counted  # type: ignore[method-assign]
    feed = StatusFeed(lambda: stack)
    try:
        assert feed.latest() is None
        first, second = feed.listen(), feed.listen()
        [one] = await asyncio.wait_for(first.get(), 30)
        [two] = await asyncio.wait_for(second.get(), 30)
        assert one is two and one.state == "unavailable"
        assert feed.latest() == [one] and asked == 1
        late = feed.listen()  # gets the last snapshot at once
        assert late.get_nowait() == [one]
        for queue in (first, second, late):
            await feed.leave(queue)
        polled = asked
        await asyncio.sleep(services_feed.STATUS_INTERVAL * 2)
        assert asked == polled  # nobody listens: nobody asks
    finally:
        await client.close()


def test_every_status_env_manager_answers_keeps_its_meaning() -> None:
    """The table of runtime/status.py read backwards: each domain error's status from an
    env-manager is that error again at the orchestrator; credentials refused is Unavailable."""
    for cls, (code, _) in STATUSES.items():
        error = env_manager_error(InfraError(f"no {code.name}", code=code.name,
                                             address="127.0.0.1:1"))
        assert type(error) is cls, code
    refused = env_manager_error(InfraError("bad token", code="UNAUTHENTICATED",
                                           address="127.0.0.1:1"))
    assert isinstance(refused, Unavailable) and "bad token" in str(refused)
