"""Shared pytest fixtures for agent-infra.

Sections:
  * Docker engine: `docker`, `containers` (helpers live in tests/docker_support.py).
  * Daemon fixtures: appended below.

A test using `docker` or `containers` is marked `docker` automatically, so
`pytest -m "not docker"` deselects it. A missing engine FAILS those tests unless
AGENT_INFRA_NO_DOCKER=1 (see tests/docker_support.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
import pytest_asyncio
import trustme

from tests.docker_support import ContainerFactory, require_docker

# ---------------------------------------------------------------------------------------
# Collection: mark docker tests
# ---------------------------------------------------------------------------------------

DOCKER_FIXTURES = frozenset({"docker", "containers"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames: list[str] = getattr(item, "fixturenames", [])
        if DOCKER_FIXTURES.intersection(fixturenames):
            item.add_marker(pytest.mark.docker)


# ---------------------------------------------------------------------------------------
# Docker engine
# ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    """A connected aiodocker client (fails the test when no engine answers)."""
    client = await require_docker()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def containers(docker: aiodocker.Docker) -> AsyncIterator[ContainerFactory]:
    """Starts test containers; every container it labelled is removed after the test."""
    factory = ContainerFactory(docker)
    try:
        yield factory
    finally:
        await factory.cleanup()


# ---------------------------------------------------------------------------------------
# TLS material
# ---------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("agent@example.test")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem",
             "key": tmp_path / "server.key", "client_cert": tmp_path / "client.pem",
             "client_key": tmp_path / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files
