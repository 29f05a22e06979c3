"""Host hardware for GetResourceAvailability: CPU, memory, and GPUs through nvidia-smi.

nvidia-smi is faked by scripts put first on PATH (this machine has no GPU).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from agent_infra.env_manager.docker.engine import DockerEngine
from agent_infra.env_manager.resources import (
    Gpu,
    HardwareProbe,
    availability,
    cpu_cores,
    memory_bytes,
    parse_gpus,
    read_gpus,
)
from agent_infra.env_manager.settings import RetrySettings
from agent_infra.env_manager.tasks.runner import TaskRunner
from agent_infra.env_manager.tasks.store import TaskStore
from agent_infra.env_manager.tasks.workloads import TaskSettings, WorkloadClass
from agent_infra.runtime.errors import InvalidArgument

MIB = 1024 * 1024
TWO_GPUS = (
    "0, NVIDIA A100-SXM4-40GB, 40960, 37\n"
    "1, NVIDIA GeForce RTX 4090, Founders, 24564, [N/A]\n"
)


def fake_nvidia_smi(folder: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put an executable `nvidia-smi` running `body` (sh) first on PATH; PATH keeps sh itself."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return script


async def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await read_gpus() == ()


async def test_gpus_are_parsed_from_nvidia_smi(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    args_file = tmp_path / "args"
    fake_nvidia_smi(tmp_path / "bin", f"echo \"$@\" > {args_file}\nprintf '{TWO_GPUS}'",
                    monkeypatch)
    gpus = await read_gpus()
    assert gpus == (
        Gpu(0, "NVIDIA A100-SXM4-40GB", 40960 * MIB, 37.0),
        Gpu(1, "NVIDIA GeForce RTX 4090, Founders", 24564 * MIB, 0.0),
    )
    assert args_file.read_text().split() == [
        "--query-gpu=index,name,memory.total,utilization.gpu", "--format=csv,noheader,nounits"]


@pytest.mark.parametrize("body", [
    "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9",
    "echo 'this is not csv'",
    "echo '0, name, lots, 5'",
])
async def test_failing_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                body: str) -> None:
    fake_nvidia_smi(tmp_path / "bin", body, monkeypatch)
    assert await read_gpus() == ()


async def test_hanging_nvidia_smi_is_cut_off(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path / "bin", "exec sleep 30", monkeypatch)
    began = time.monotonic()
    assert await read_gpus(timeout=0.5) == ()
    assert time.monotonic() - began < 5


async def test_no_output_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path / "bin", "exit 0", monkeypatch)
    assert await read_gpus() == ()
    assert parse_gpus("\n\n") == ()


def test_cpu_and_memory_are_the_hosts(tmp_path: Path) -> None:
    assert cpu_cores() == len(os.sched_getaffinity(0))
    assert memory_bytes() > 64 * MIB
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  100 kB\nMemTotal:       16318412 kB\n")
    assert memory_bytes(str(meminfo)) == 16318412 * 1024


async def test_hardware_is_read_once_within_the_ttl(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    fake_nvidia_smi(tmp_path / "bin", f"echo x >> {calls}\nprintf '{TWO_GPUS}'", monkeypatch)
    probe = HardwareProbe(ttl=60)
    first, second = await probe.get(), await probe.get()
    assert first is second
    assert len(first.gpus) == 2 and first.cpu_cores >= 1 and first.memory_bytes > 0
    assert calls.read_text().count("x") == 1
    expired = HardwareProbe(ttl=0)
    await expired.get()
    await expired.get()
    assert calls.read_text().count("x") == 3


async def test_unknown_class_is_invalid_argument(tmp_path: Path) -> None:
    # The class is checked before anything touches the engine, so none is needed here.
    store = await TaskStore.open(tmp_path / "tasks.sqlite3", retention=60)
    engine = DockerEngine("unix:///nonexistent.sock", RetrySettings())
    runner = TaskRunner(engine, "unit", {"cpu_short": WorkloadClass(image="x")}, TaskSettings(),
                        store)
    try:
        with pytest.raises(InvalidArgument, match=r"workload_class 'gpu' is unknown.*cpu_short"):
            await availability(runner, HardwareProbe(), "gpu")
        assert runner.capacity("cpu_short") == 1
    finally:
        await engine.close()
        await store.close()
