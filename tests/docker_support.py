"""Helpers for tests that need a real Docker engine (aiodocker).

A missing engine is a test *failure*, not a skip: CI must not go green without running the
docker tests. Set AGENT_INFRA_NO_DOCKER=1 to skip them explicitly instead. `scripts/bootstrap.sh`
starts an engine and builds TEST_IMAGE locally (no registry is reachable, so nothing is pulled).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping
from typing import Any

import aiodocker
import aiohttp
import pytest
from aiodocker.containers import DockerContainer

from tests.deploy_images import BUILD_IMAGE_SCRIPT

DOCKER_OPT_OUT_ENV = "AGENT_INFRA_NO_DOCKER"
TEST_IMAGE = "local/busybox:latest"
# The Debian base image scripts/build_image.sh makes with debootstrap (its /bin/sh is dash).
DEBIAN_IMAGE = "local/debian-python:bookworm"
# The first build on a machine runs debootstrap: minutes (8-9 seen under load).
BUILD_IMAGE_SECONDS = 1500.0
TEST_LABEL = "org.agent-infra.test"

PING_TIMEOUT_S = 5.0
_GONE_STATUSES = frozenset({404, 409})  # no such container / removal already in progress


def docker_opted_out() -> bool:
    return os.environ.get(DOCKER_OPT_OUT_ENV, "") == "1"


async def require_docker() -> aiodocker.Docker:
    """Connect to the engine (DOCKER_HOST wins when set) and ping it.

    Unreachable engine: pytest.fail, or pytest.skip when AGENT_INFRA_NO_DOCKER=1.
    """
    # Pass DOCKER_HOST explicitly: aiodocker would otherwise let a docker context win over it.
    docker_host = os.environ.get("DOCKER_HOST") or None
    where = docker_host or "the default socket (DOCKER_HOST unset)"
    docker: aiodocker.Docker | None = None
    try:
        docker = aiodocker.Docker(url=docker_host)
        async with asyncio.timeout(PING_TIMEOUT_S):
            await docker.version()
    except (
        aiodocker.DockerError,
        aiohttp.ClientError,
        OSError,
        TimeoutError,
        ValueError,
        AssertionError,
    ) as exc:
        # AssertionError/ValueError: aiodocker found no DOCKER_HOST, context or local socket.
        if docker is not None:
            await docker.close()
        detail = str(exc) or "no docker socket found"
        reason = f"Docker engine not reachable at {where} ({type(exc).__name__}: {detail})"
        if docker_opted_out():
            pytest.skip(f"{reason}; skipped because {DOCKER_OPT_OUT_ENV}=1")
        pytest.fail(
            f"{reason}: run scripts/bootstrap.sh, or set {DOCKER_OPT_OUT_ENV}=1 "
            "to skip docker tests explicitly",
            pytrace=False,
        )
    return docker


class ContainerFactory:
    """Creates labelled test containers and removes all of them on cleanup().

    Every container gets TEST_LABEL=<run_id>, unique per factory; cleanup() removes by that
    label, so containers the factory lost track of (or that a test made itself with
    `factory.labels`) are removed too.
    """

    def __init__(self, docker: aiodocker.Docker) -> None:
        self.docker = docker
        self.run_id = uuid.uuid4().hex[:12]

    @property
    def labels(self) -> dict[str, str]:
        """The labels that mark a container as this factory's."""
        return {TEST_LABEL: self.run_id}

    async def run(
        self,
        cmd: list[str],
        *,
        name_prefix: str = "t",
        labels: Mapping[str, str] | None = None,
        **config_overrides: Any,
    ) -> DockerContainer:
        """Create and start a container from TEST_IMAGE running `cmd`.

        config_overrides are top-level keys of the engine's container-create body
        (e.g. HostConfig=..., Env=[...], Image=...). Never pulls.
        """
        name = f"agent-infra-test-{name_prefix}-{uuid.uuid4().hex[:8]}"
        all_labels = {**config_overrides.pop("Labels", {}), **(labels or {}), **self.labels}
        config: dict[str, Any] = {"Image": TEST_IMAGE, **config_overrides}
        config["Cmd"] = list(cmd)
        config["Labels"] = all_labels
        # containers.create + start, not containers.run: run() pulls on a 404, and no
        # registry is reachable here.
        try:
            container = await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 404 and "image" in exc.message.lower():
                pytest.fail(
                    f"image {config['Image']} missing ({exc.message}): run scripts/bootstrap.sh",
                    pytrace=False,
                )
            raise
        await container.start()
        return container

    async def list(self) -> list[DockerContainer]:
        """This factory's containers, running or not, found by label."""
        return await self.docker.containers.list(
            all=True, filters={"label": [f"{TEST_LABEL}={self.run_id}"]}
        )

    async def cleanup(self) -> None:
        """Force-remove every container carrying this factory's label.

        Containers already gone are ignored; other errors are raised after all removals ran.
        """
        containers = await self.list()
        results = await asyncio.gather(
            *(self._remove(c) for c in containers), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation and friends win
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise ExceptionGroup(f"removing {len(errors)} test container(s) failed", errors)

    @staticmethod
    async def _remove(container: DockerContainer) -> None:
        try:
            await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in _GONE_STATUSES:
                raise


async def ensure_debian_image() -> str:
    """DEBIAN_IMAGE, built by scripts/build_image.sh when this engine lacks it (a test using
    it must not depend on another test having built it first)."""
    async with aiodocker.Docker() as docker:
        try:
            await docker.images.inspect(DEBIAN_IMAGE)
            return DEBIAN_IMAGE
        except aiodocker.DockerError:
            pass
    build = await asyncio.create_subprocess_exec(
        "bash", str(BUILD_IMAGE_SCRIPT), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(BUILD_IMAGE_SECONDS):
            output, _ = await build.communicate()
    except TimeoutError:
        build.kill()
        await build.wait()
        pytest.fail(f"scripts/build_image.sh took over {BUILD_IMAGE_SECONDS:.0f} s")
    if build.returncode != 0:
        pytest.fail(f"scripts/build_image.sh exited {build.returncode}:\n"
                    f"{output.decode(errors='replace')[-3000:]}")
    return DEBIAN_IMAGE
