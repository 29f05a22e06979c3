"""Shared pytest fixtures for agent-infra.

Sections:
  * Deployment images: built in the background once tests needing them are selected.
  * Docker engine: `docker`, `containers` (helpers live in tests/docker_support.py).
  * Daemon fixtures: appended below.

A test using `docker` or `containers` is marked `docker` automatically, so
`pytest -m "not docker"` deselects it. A missing engine FAILS those tests unless
AGENT_INFRA_NO_DOCKER=1 (see tests/docker_support.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
import pytest_asyncio
import trustme

from tests.deploy_images import KINDS, REPO, STATE
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
# Deployment images
# ---------------------------------------------------------------------------------------

# The image kind (tests/deploy_images.py) each module's fixture builds. Their builds take minutes
# on a fresh machine; started here they overlap the tests collected before them. The fixtures
# still build what they need themselves: that waits on the build lock, then finds the image.
PREBUILT_FOR = {"test_compose.py": "daemon", "test_systemd_deploy.py": "systemd"}
_prebuild: subprocess.Popen[bytes] | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _prebuild
    if (session.config.option.collectonly or os.environ.get("AGENT_INFRA_NO_PREBUILD") == "1"
            or os.environ.get("AGENT_INFRA_PREBUILD") == "started"):  # by scripts/test.sh
        return
    wanted = {PREBUILT_FOR[item.path.name] for item in session.items
              if item.path.name in PREBUILT_FOR}
    if not wanted:
        return
    STATE.mkdir(exist_ok=True)
    with (STATE / "prebuild.log").open("wb") as log:
        _prebuild = subprocess.Popen(
            [sys.executable, "-m", "tests.deploy_images", *(k for k in KINDS if k in wanted)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _prebuild is None or _prebuild.poll() is not None:
        return
    _prebuild.terminate()  # its tests were deselected or the run stopped early
    try:
        _prebuild.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(_prebuild.pid, 9)
        _prebuild.wait()


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
