"""The docker test harness itself: test image, container factory, engine-missing policy."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import pytest

from tests.docker_support import (
    DOCKER_OPT_OUT_ENV,
    TEST_IMAGE,
    TEST_LABEL,
    ContainerFactory,
    require_docker,
)

WAIT_S = 30


async def test_test_image_echoes_hi(
    containers: ContainerFactory, request: pytest.FixtureRequest
) -> None:
    assert request.node.get_closest_marker("docker") is not None

    container = await containers.run(["echo", "hi"], name_prefix="echo")
    async with asyncio.timeout(WAIT_S):
        result = await container.wait()
    assert result["StatusCode"] == 0
    logs = await container.log(stdout=True, stderr=True)
    assert "".join(logs) == "hi\n"

    info = await container.show()
    assert info["Name"].startswith("/agent-infra-test-echo-")
    assert info["Config"]["Labels"][TEST_LABEL] == containers.run_id


async def test_test_image_is_labelled_local_busybox(docker: aiodocker.Docker) -> None:
    image = await docker.images.inspect(TEST_IMAGE)
    assert image["Config"]["Labels"]["org.agent-infra.image"] == "test"
    assert "PATH=/bin" in image["Config"]["Env"]


async def test_run_merges_labels_and_overrides(containers: ContainerFactory) -> None:
    container = await containers.run(
        ["sh", "-c", 'echo "$GREETING"; id -un'],
        labels={"org.agent-infra.extra": "yes", TEST_LABEL: "hijack"},
        Env=["GREETING=hello"],
        User="nobody",
    )
    async with asyncio.timeout(WAIT_S):
        await container.wait()
    assert "".join(await container.log(stdout=True)) == "hello\nnobody\n"
    labels = (await container.show())["Config"]["Labels"]
    assert labels["org.agent-infra.extra"] == "yes"
    assert labels[TEST_LABEL] == containers.run_id  # the factory's label always wins


async def test_run_fails_clearly_on_missing_image_without_pulling(
    containers: ContainerFactory,
) -> None:
    absent = f"local/agent-infra-absent-{containers.run_id}:latest"
    with pytest.raises(pytest.fail.Exception) as failed:
        await containers.run(["true"], Image=absent)
    assert f"image {absent} missing" in str(failed.value)
    assert "scripts/bootstrap.sh" in str(failed.value)


async def _label_listing(docker: aiodocker.Docker, run_id: str) -> set[str]:
    found = await docker.containers.list(all=True, filters={"label": [f"{TEST_LABEL}={run_id}"]})
    return {c.id for c in found}


async def test_cleanup_removes_every_labelled_container(docker: aiodocker.Docker) -> None:
    factory = ContainerFactory(docker)
    bystander = ContainerFactory(docker)
    try:
        made = [await factory.run(["sleep", "300"], name_prefix="sleep") for _ in range(3)]
        done = await factory.run(["true"], name_prefix="done")
        async with asyncio.timeout(WAIT_S):
            await done.wait()
        # Never started and never seen by run(): found by its label all the same.
        stray = await docker.containers.create(
            {"Image": TEST_IMAGE, "Cmd": ["true"], "Labels": factory.labels}
        )
        other = await bystander.run(["sleep", "300"], name_prefix="other")

        expected = {c.id for c in [*made, done, stray]}
        assert await _label_listing(docker, factory.run_id) == expected

        await factory.cleanup()

        assert await _label_listing(docker, factory.run_id) == set()
        assert await factory.list() == []
        # Another factory's containers are not touched.
        assert await _label_listing(docker, bystander.run_id) == {other.id}

        await factory.cleanup()  # idempotent
    finally:
        await factory.cleanup()
        await bystander.cleanup()
    assert await _label_listing(docker, bystander.run_id) == set()


async def test_cleanup_ignores_containers_already_gone(
    containers: ContainerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = await containers.run(["sleep", "300"])
    stale = await containers.list()
    assert [c.id for c in stale] == [container.id]
    await container.delete(force=True)

    async def stale_list() -> list[aiodocker.containers.DockerContainer]:
        return stale

    monkeypatch.setattr(containers, "list", stale_list)
    await containers.cleanup()  # 404 from the engine is swallowed


# ---------------------------------------------------------------------------------------
# No engine: fail loudly unless explicitly opted out. These need no engine themselves.
# ---------------------------------------------------------------------------------------


@pytest.fixture(params=["refused", "missing"])
def dead_docker_host(request: pytest.FixtureRequest) -> Iterator[str]:
    """DOCKER_HOST URL of a unix socket nobody listens on (or that does not exist)."""
    tmp = tempfile.mkdtemp(prefix="ai-dead-")  # short path: sun_path is ~108 bytes
    path = Path(tmp) / "docker.sock"
    if request.param == "refused":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))  # bound, never listening: connect() is refused
    try:
        yield f"unix://{path}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_require_docker_fails_without_engine(
    dead_docker_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", dead_docker_host)
    monkeypatch.delenv(DOCKER_OPT_OUT_ENV, raising=False)

    with pytest.raises(pytest.fail.Exception) as failed:
        await require_docker()

    message = str(failed.value)
    assert f"Docker engine not reachable at {dead_docker_host}" in message
    assert "scripts/bootstrap.sh" in message
    assert f"{DOCKER_OPT_OUT_ENV}=1" in message


@pytest.mark.parametrize("opt_out", ["0", ""])
async def test_require_docker_fails_unless_opt_out_is_exactly_1(
    dead_docker_host: str, monkeypatch: pytest.MonkeyPatch, opt_out: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", dead_docker_host)
    monkeypatch.setenv(DOCKER_OPT_OUT_ENV, opt_out)

    with pytest.raises(pytest.fail.Exception):
        await require_docker()


async def test_require_docker_skips_when_opted_out(
    dead_docker_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", dead_docker_host)
    monkeypatch.setenv(DOCKER_OPT_OUT_ENV, "1")

    with pytest.raises(pytest.skip.Exception) as skipped:
        await require_docker()

    assert dead_docker_host in str(skipped.value)


async def test_require_docker_fails_when_no_socket_is_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No DOCKER_HOST, no docker context, no socket at aiodocker's search paths (private list:
    # monkeypatch raises if aiodocker renames it, so this test cannot pass vacuously).
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("aiodocker.docker._sock_search_paths", [tmp_path / "docker.sock"])
    monkeypatch.delenv(DOCKER_OPT_OUT_ENV, raising=False)

    with pytest.raises(pytest.fail.Exception) as failed:
        await require_docker()

    assert "Docker engine not reachable at the default socket" in str(failed.value)
