"""ExecuteTask request checking, workload class config, container naming and configuration."""

from __future__ import annotations

import re
from typing import Any

import pytest
from agent_infra.env_manager import labels
from agent_infra.env_manager.tasks.container import container_config, container_name
from agent_infra.env_manager.tasks.output import StreamCapture
from agent_infra.env_manager.tasks.payload import PAYLOAD_KEYS, TaskSpec, parse_request
from agent_infra.env_manager.tasks.workloads import (
    DEFAULT_IMAGE,
    WorkloadClass,
    default_workload_classes,
    resolve_workload_classes,
)
from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument
from pydantic import ValidationError

IMAGE = "local/busybox:latest"
CLASSES = {
    "cpu_short": WorkloadClass(image=IMAGE, allowed_images=["local/other:1"], concurrency=2,
                               default_timeout=30, max_timeout=60, env={"FROM_CLASS": "c",
                                                                       "SHARED": "class"}),
    "gpu": WorkloadClass(image=IMAGE, gpus=1, concurrency=0),
}


def parse(payload: dict[str, str] | None = None, *, task_id: str = "t-1",
          workload_class: str = "cpu_short", timeout: int = 0) -> TaskSpec:
    return parse_request(task_id, workload_class, payload or {}, timeout, CLASSES)


# -- task ids -------------------------------------------------------------------------------

@pytest.mark.parametrize("task_id", ["a", "A-b_c.d:e", "x" * 128, "run:2024-01-01T00.00", "0"])
def test_task_ids_accepted(task_id: str) -> None:
    assert parse(task_id=task_id).task_id == task_id


@pytest.mark.parametrize("task_id", [
    "", "x" * 129, "a b", "a/b", "../../etc/passwd", "a;rm -rf /", "ü", "a\nb", "$(id)", "a\0b",
])
def test_task_ids_rejected(task_id: str) -> None:
    with pytest.raises(InvalidArgument, match="task_id"):
        parse(task_id=task_id)


# -- workload classes -------------------------------------------------------------------------

def test_unknown_class_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"workload_class 'gpu_huge'.*cpu_short, gpu"):
        parse(workload_class="gpu_huge")


def test_disabled_class_is_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match=r"'gpu' is disabled"):
        parse(workload_class="gpu")


def test_default_image_is_always_allowed() -> None:
    workload = WorkloadClass(image="a:1", allowed_images=["b:1"])
    assert workload.allowed_images == ["a:1", "b:1"]
    assert WorkloadClass(image="a:1").allowed_images == ["a:1"]
    assert WorkloadClass().allowed_images == [DEFAULT_IMAGE]


@pytest.mark.parametrize(("config", "message"), [
    ({"default_timeout": 60, "max_timeout": 30}, "max_timeout"),
    ({"mounts": ["relative:/x"]}, "absolute"),
    ({"mounts": ["/a:/b:rx"]}, "ro or rw"),
    ({"mounts": ["/a"]}, "container/path"),
    ({"mounts": ["/a/../etc:/b"]}, "normalised"),
    ({"concurrency": -1}, "concurrency"),
    ({"privileged": True}, "privileged"),
    ({"env": {"A=B": "x"}}, "env names"),
    ({"memory": "lots"}, "memory"),
])
def test_bad_class_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkloadClass(**config)


def test_class_sizes_and_durations_parse() -> None:
    workload = WorkloadClass(memory="512m", default_timeout="2m", max_timeout="1h",
                             mounts=["/srv/data:/data:ro"])
    assert workload.memory == 512 * 1024 * 1024
    assert (workload.default_timeout, workload.max_timeout) == (120.0, 3600.0)


def test_default_classes_follow_the_host() -> None:
    classes = default_workload_classes(cpu_cores=8, gpu_count=0)
    assert set(classes) == {"cpu_short", "cpu_long", "gpu"}
    assert classes["cpu_short"].concurrency == 8
    assert classes["cpu_long"].concurrency == 4
    assert classes["gpu"].concurrency == 0
    assert default_workload_classes(cpu_cores=1, gpu_count=2)["gpu"].concurrency == 2
    assert all(c.network_mode == "none" and not c.mounts for c in classes.values())
    configured = {"mine": WorkloadClass(image=IMAGE)}
    assert resolve_workload_classes(configured, 8, 0) == configured
    assert set(resolve_workload_classes({}, 8, 0)) == set(classes)


# -- payload keys ---------------------------------------------------------------------------

def test_unknown_payload_key_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"'prompt'.*allowed keys: command, image, env, "
                                              r"stdin, workdir"):
        parse({"prompt": "hi", "command": "true"})
    assert PAYLOAD_KEYS == ("command", "image", "env", "stdin", "workdir")


@pytest.mark.parametrize(("text", "command"), [
    ('["echo", "hi there"]', ("echo", "hi there")),
    ("echo hi; exit 3", ("/bin/sh", "-c", "echo hi; exit 3")),
    ("[ -f /x ] && cat /x", ("/bin/sh", "-c", "[ -f /x ] && cat /x")),
    ('"echo quoted"', ("/bin/sh", "-c", "echo quoted")),
    ("true", ("/bin/sh", "-c", "true")),
    ("42", ("/bin/sh", "-c", "42")),
])
def test_command_forms(text: str, command: tuple[str, ...]) -> None:
    assert parse({"command": text}).command == command


def test_no_command_runs_the_image_default() -> None:
    assert parse().command is None


@pytest.mark.parametrize("text", ["", "   ", "[]", '["echo", 1]', '[["a"]]', '""'])
def test_bad_commands(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"payload\.command"):
        parse({"command": text})


def test_images() -> None:
    assert parse().image == IMAGE
    assert parse({"image": ""}).image == IMAGE
    assert parse({"image": "local/other:1"}).image == "local/other:1"
    with pytest.raises(InvalidArgument, match=r"payload\.image 'evil:latest' is not allowed.*"
                                              r"local/busybox:latest, local/other:1"):
        parse({"image": "evil:latest"})


def test_env_merges_over_the_class_env() -> None:
    spec = parse({"env": '{"FROM_TASK": "t", "SHARED": "task", "EMPTY": ""}'})
    assert dict(spec.env) == {"FROM_CLASS": "c", "SHARED": "task", "FROM_TASK": "t", "EMPTY": ""}
    assert dict(parse({"env": ""}).env) == {"FROM_CLASS": "c", "SHARED": "class"}


@pytest.mark.parametrize("text", [
    "FOO=bar", "{", '["A=1"]', '{"A": 1}', '{"A": null}', '{"A=B": "x"}', '{"": "x"}', '"x"',
])
def test_bad_env(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"payload\.env"):
        parse({"env": text})


def test_stdin_and_workdir() -> None:
    spec = parse({"stdin": "héllo\n", "workdir": "/tmp/work"})
    assert spec.stdin == "héllo\n".encode()
    assert spec.workdir == "/tmp/work"
    assert parse({"stdin": ""}).stdin == b""  # empty stdin is still an immediate EOF
    assert parse().stdin is None
    with pytest.raises(InvalidArgument, match=r"payload\.workdir"):
        parse({"workdir": "relative/dir"})


# -- timeouts -------------------------------------------------------------------------------

@pytest.mark.parametrize(("asked", "timeout", "capped"), [
    (0, 30.0, False), (5, 5.0, False), (60, 60.0, False), (61, 60.0, True), (10**6, 60.0, True),
])
def test_timeouts(asked: int, timeout: float, capped: bool) -> None:
    spec = parse(timeout=asked)
    assert (spec.timeout, spec.timeout_capped) == (timeout, capped)


def test_negative_timeout_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="timeout_seconds"):
        parse(timeout=-1)


# -- container naming and configuration -------------------------------------------------------

@pytest.mark.parametrize("task_id", ["a", "run:1", "run_1", "x" * 128, "A.b-c"])
def test_container_names_are_valid_and_distinct(task_id: str) -> None:
    name = container_name("agent-infra", task_id)
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name)
    assert name.startswith("agent-infra-task-")
    assert name == container_name("agent-infra", task_id)
    assert container_name("agent-infra", "run:1") != container_name("agent-infra", "run_1")


def test_container_config_is_confined() -> None:
    workload = WorkloadClass(image=IMAGE, cpus=1.5, memory="256m", gpus=1, concurrency=1,
                             network_mode="none", mounts=["/srv/in:/in:ro"])
    spec = parse_request("t:1", "mine", {"command": '["echo", "x"]', "stdin": "data"}, 0,
                         {"mine": workload})
    config = container_config(spec, workload, "stack-a", 1024)
    host = config["HostConfig"]
    assert host["Privileged"] is False
    assert host["AutoRemove"] is False
    assert host["Binds"] == ["/srv/in:/in:ro"]
    assert host["NetworkMode"] == "none"
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 1, "Capabilities": [["gpu"]]}]
    assert "CapAdd" not in host and "Devices" not in host
    assert config["Entrypoint"] == [] and config["Cmd"] == ["echo", "x"]
    assert config["OpenStdin"] is config["StdinOnce"] is config["AttachStdin"] is True
    assert config["Labels"][labels.STACK] == "stack-a"
    assert config["Labels"][labels.KIND] == labels.KIND_TASK
    assert config["Labels"][labels.TASK_ID] == "t:1"
    assert config["Labels"][labels.WORKLOAD_CLASS] == "mine"


def test_container_config_without_command_or_stdin() -> None:
    workload = CLASSES["cpu_short"]
    config = container_config(parse(), workload, "s", 1024)
    assert "Cmd" not in config and "Entrypoint" not in config
    assert config["OpenStdin"] is False
    assert config["HostConfig"]["Binds"] == []
    assert "NanoCpus" not in config["HostConfig"] and "DeviceRequests" not in config["HostConfig"]


# -- output capture -------------------------------------------------------------------------

def test_capture_keeps_the_head_and_counts_the_rest() -> None:
    capture = StreamCapture(limit=5)
    for chunk in (b"abc", b"defgh", b"", b"ijk"):
        capture.feed(chunk)
    assert (capture.text(), capture.truncated, capture.total) == ("abcde", True, 11)
    exact = StreamCapture(limit=3)
    exact.feed(b"abc")
    assert (exact.text(), exact.truncated) == ("abc", False)


def test_capture_drops_a_character_cut_at_the_limit() -> None:
    capture = StreamCapture(limit=3)
    capture.feed("abé!".encode())  # é is two bytes: the cut falls inside it
    assert capture.text() == "ab"
    whole = StreamCapture(limit=100)
    whole.feed(b"ok \xff")
    assert whole.text() == "ok \ufffd"
