"""GetResourceAvailability: the host's real CPU, memory and GPUs, and each class's capacity.

GPUs come from `nvidia-smi` when it is on PATH; a host without it, or where it fails or hangs, has
no GPUs, which is an answer and not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass

from agent_infra.runtime.logs import get_logger

from .tasks.runner import TaskRunner

log = get_logger("resources")

NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_ARGS = ("--query-gpu=index,name,memory.total,utilization.gpu",
                   "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT_S = 5.0
# Hardware does not change; GPU utilisation does, so the cache is short rather than forever.
HARDWARE_TTL_S = 10.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    utilization_percent: float


@dataclass(frozen=True)
class HardwareInfo:
    cpu_cores: int
    memory_bytes: int
    gpus: tuple[Gpu, ...]


@dataclass(frozen=True)
class Availability:
    available: bool  # a task of the class could start now
    capacity: int
    in_use: int
    hardware: HardwareInfo


class HardwareProbe:
    """Reads the hardware at most once per `ttl` seconds; concurrent callers share one read."""

    def __init__(self, ttl: float = HARDWARE_TTL_S) -> None:
        self.ttl = ttl
        self._cached: tuple[float, HardwareInfo] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> HardwareInfo:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] >= self.ttl:
                self._cached = (time.monotonic(), await read_hardware())
            return self._cached[1]


async def read_hardware() -> HardwareInfo:
    return HardwareInfo(cpu_cores(), memory_bytes(), await read_gpus())


def cpu_cores() -> int:
    # The cores this process may run on (taskset, cpusets), not merely those in the machine.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


async def read_gpus(timeout: float = NVIDIA_SMI_TIMEOUT_S) -> tuple[Gpu, ...]:
    """The GPUs nvidia-smi lists; none when it is absent, fails, hangs or prints nonsense."""
    executable = shutil.which(NVIDIA_SMI)
    if executable is None:
        return ()
    try:
        process = await asyncio.create_subprocess_exec(
            executable, *NVIDIA_SMI_ARGS, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        log.warning("nvidia_smi_failed", error=str(exc))
        return ()
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        log.warning("nvidia_smi_failed", error=f"no answer within {timeout:g} s")
        return ()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0:
        log.warning("nvidia_smi_failed", exit_code=process.returncode,
                    error=err.decode(errors="replace").strip()[:500])
        return ()
    try:
        return parse_gpus(out.decode(errors="replace"))
    except ValueError as exc:
        log.warning("nvidia_smi_failed", error=f"unexpected output: {exc}")
        return ()


def parse_gpus(text: str) -> tuple[Gpu, ...]:
    """Rows of "index, name, memory.total MiB, utilization %" (csv, noheader, nounits)."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # The name may itself hold commas: the fields around it are fixed.
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 4:
            raise ValueError(f"expected 4 fields in {line!r}")
        index, name = fields[0], ", ".join(fields[1:-2])
        memory, utilization = fields[-2], fields[-1]
        gpus.append(Gpu(int(index), name, int(_number(memory) * MIB), _number(utilization)))
    return tuple(gpus)


def _number(text: str) -> float:
    # nvidia-smi prints "[N/A]" or "[Not Supported]" for what a GPU cannot report.
    return 0.0 if text.startswith("[") else float(text)


async def availability(runner: TaskRunner, hardware: HardwareProbe,
                       workload_class: str) -> Availability:
    """Capacity and use of a workload class (unknown class: InvalidArgument), with the hardware.
    An empty class asks for the hardware and the classes' contracts only (nothing available)."""
    if not workload_class:
        return Availability(False, 0, 0, await hardware.get())
    capacity = runner.capacity(workload_class)
    in_use, info = await asyncio.gather(runner.in_use(workload_class), hardware.get())
    available = in_use < capacity and runner.queued(workload_class) == 0
    return Availability(available, capacity, in_use, info)
