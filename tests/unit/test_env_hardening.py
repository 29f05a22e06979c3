"""Issue 10's env-manager findings held in pure code: override allowlists (2), class defaults
(3), request keys (4), output that fits a message (9), bounded pull buffers (10), and the task
store's file modes (12)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_infra.env_manager import image_pulls
from agent_infra.env_manager.docker import images
from agent_infra.env_manager.docker.images import PullProgress
from agent_infra.env_manager.registry import Registry, ServiceSpec, apply_overrides
from agent_infra.env_manager.tasks.container import container_config
from agent_infra.env_manager.tasks.output import StreamCapture
from agent_infra.env_manager.tasks.payload import caller_identity, parse_request
from agent_infra.env_manager.tasks.runner import fit_output
from agent_infra.env_manager.tasks.store import TaskStore
from agent_infra.env_manager.tasks.workloads import WorkloadClass, parse_mount
from agent_infra.runtime.errors import InvalidArgument
from pydantic import ValidationError

# -- finding 2 ------------------------------------------------------------------------------


def spec(**extra: Any) -> ServiceSpec:
    return ServiceSpec(image="redis:7", **extra)


@pytest.mark.parametrize("key", ["image", "command", "entrypoint", "user", "restart",
                                 "network_mode", "working_dir", "env.A", "labels.A", "ports",
                                 "resources.memory"])
def test_nothing_is_overridable_by_default(key: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"service 'cache' does not allow overriding "
                                              rf"'{key}'.*allows: nothing"):
        apply_overrides(spec(), "cache", {f"cache.{key}": "x"})


def test_the_registry_allowlist_is_per_key() -> None:
    allowing = spec(overridable=["env", "ports", "resources.memory", "labels.team"])
    changed = apply_overrides(allowing, "cache", {
        "cache.env.ANY": "1", "cache.ports": '["6380:6379"]', "cache.resources.memory": "1g",
        "cache.labels.team": "a"})
    assert changed.env == {"ANY": "1"} and str(changed.ports[0]) == "127.0.0.1:6380:6379/tcp"
    assert changed.resources.memory == 1024**3 and changed.labels == {"team": "a"}
    for key in ("cache.labels.other", "cache.resources.cpus", "cache.image"):
        with pytest.raises(InvalidArgument, match="does not allow"):
            apply_overrides(allowing, "cache", {key: "1"})
    with pytest.raises(InvalidArgument, match="cannot be overridden for any service"):
        apply_overrides(allowing, "cache", {"cache.privileged": "true"})
    with pytest.raises(InvalidArgument, match="JSON list"):
        apply_overrides(allowing, "cache", {"cache.ports": "6380:6379"})


def test_network_mode_overrides_stay_within_the_registrys() -> None:
    allowing = spec(overridable=["network_mode"])
    registry = Registry({"cache": allowing, "db": spec(network_mode="backend")})
    modes = registry.network_modes()
    for refused in ("host", "container:db", "bridge"):
        with pytest.raises(InvalidArgument, match=f"network_mode '{refused}' is not one"):
            apply_overrides(allowing, "cache", {"cache.network_mode": refused}, modes)
    assert apply_overrides(allowing, "cache", {"cache.network_mode": "backend"},
                           modes).network_mode == "backend"
    assert apply_overrides(allowing, "cache", {"cache.network_mode": "none"},
                           modes).network_mode == "none"


def test_unknown_overridable_entries_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="'privileged' cannot be overridden"):
        spec(overridable=["privileged"])


def test_overridable_does_not_change_the_config_hash() -> None:
    assert spec().config_hash() == spec(overridable=["env"]).config_hash()


# -- finding 3 ------------------------------------------------------------------------------

def test_class_defaults_are_confined() -> None:
    workload = WorkloadClass(image="img", mounts=["/a:/a", "/b:/b:rw"])
    assert (workload.user, workload.pids_limit, workload.memory) == ("65534:65534", 256,
                                                                     1024**3)
    assert [parse_mount(m)[2] for m in workload.mounts] == ["ro", "rw"]
    request = parse_request("t", "c", {}, 0, {"c": workload})
    host = container_config(request, workload, "s", 1024)["HostConfig"]
    assert host["Binds"] == ["/a:/a:ro", "/b:/b:rw"]
    assert host["CapDrop"] == ["ALL"] and "CapAdd" not in host
    assert host["PidsLimit"] == 256 and host["Memory"] == host["MemorySwap"] == 1024**3


@pytest.mark.parametrize("config, message", [
    ({"user": "nobody"}, "numeric"),
    ({"user": "0:root"}, "numeric"),
    ({"cap_add": ["ALL"]}, "ALL is not allowed"),
    ({"cap_add": ["net bind"]}, "capability names"),
    ({"pids_limit": 0}, "greater than or equal to 1"),
    ({"mounts": ["/a:/b:rwx"]}, "ro or rw"),
])
def test_bad_confinement_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkloadClass(image="img", **config)


def test_cap_add_is_normalised() -> None:
    workload = WorkloadClass(image="img", cap_add=["cap_net_bind_service", "NET_BIND_SERVICE"])
    assert workload.capabilities == ["NET_BIND_SERVICE"]


# -- finding 4 ------------------------------------------------------------------------------

def test_request_keys_bind_class_payload_image_and_caller() -> None:
    classes = {"c": WorkloadClass(image="img", allowed_images=["img2"]),
               "d": WorkloadClass(image="img")}

    def key(payload: dict[str, str], cls: str = "c", caller: str = "") -> str:
        return parse_request("t", cls, payload, 0, classes, caller).request_key

    base = key({"command": "echo"})
    assert base == key({"command": "echo"})
    assert len({base, key({}), key({"command": "echo "}), key({"command": "echo"}, "d"),
                key({"command": "echo", "image": "img2"}),
                key({"command": "echo"}, caller=caller_identity("tok"))}) == 6
    assert caller_identity(None) == caller_identity("") == ""
    assert "tok" not in caller_identity("tok")


# -- finding 9 ------------------------------------------------------------------------------

def test_capture_caps_the_encoded_text() -> None:
    capture = StreamCapture(1000)
    capture.feed(b"\xff" * 1000)
    text, cut = capture.render()
    assert len(text.encode()) <= 1000 and set(text) == {"\ufffd"} and cut


def test_fit_output_shares_the_room_and_marks_truncation() -> None:
    result = {"stdout": "\ufffd" * 1_000_000, "stderr": "e" * 10, "stdout_truncated": "false",
              "stderr_truncated": "false", "exit_code": "0"}
    fitted = fit_output(result, "", 100_000)
    size = sum(len(k.encode()) + len(v.encode()) + 20 for k, v in fitted.items())
    assert size <= 100_000
    assert fitted["stderr"] == "e" * 10 and fitted["stderr_truncated"] == "false"
    assert fitted["stdout_truncated"] == "true" and len(fitted["stdout"].encode()) > 90_000
    assert fit_output(fitted, "", 100_000) == fitted
    both = fit_output({**result, "stderr": "x" * 1_000_000}, "", 100_000)
    assert abs(len(both["stdout"].encode()) - len(both["stderr"].encode())) <= 3


# -- finding 10 -----------------------------------------------------------------------------

async def test_pull_progress_for_a_reader_that_stops_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    produced = 0

    async def endless(engine: object, image: str) -> AsyncIterator[PullProgress]:
        nonlocal produced
        while True:
            produced += 1
            yield PullProgress(image, "downloading", produced, 0, 0, "")

    monkeypatch.setattr(images, "pull", endless)
    progress = image_pulls.pull_all(object(), ["a", "b"])  # type: ignore[arg-type]
    await anext(progress)
    await asyncio.sleep(0.2)  # the reader stops reading
    assert produced <= image_pulls.PROGRESS_BUFFER + 4
    await progress.aclose()  # type: ignore[attr-defined]


# -- finding 12 -----------------------------------------------------------------------------

async def test_task_store_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "tasks.sqlite3"
        store = await TaskStore.open(path, retention=60)
        try:
            from tests.unit.test_task_store import result
            await store.put("t", result(0.0))
            for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        finally:
            await store.close()
        path.chmod(0o644)  # a store made by an older version
        reopened = await TaskStore.open(path, retention=60)
        await reopened.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
