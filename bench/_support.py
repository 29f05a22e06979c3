"""What the Docker benches share: the docker CLI, label clean-up, a running env-manager, verdicts.

Every container a bench makes carries BENCH_LABEL=<run id>, unique per run, so clean-up removes
exactly this run's containers (other people test on the same engine) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent_infra.wire import env_manager_pb2_grpc  # noqa: E402  (needs the repo root on sys.path)

from tests.daemon_support import DaemonProcess, running_daemon  # noqa: E402

if TYPE_CHECKING:
    from agent_infra.wire.env_manager_pb2_grpc import EnvManagerServiceAsyncStub

IMAGE = "local/busybox:latest"
BENCH_LABEL = "org.agent-infra.bench"
STACK_LABEL = "org.agent-infra.stack"  # services/env_manager/labels.py
COMMAND_TIMEOUT_S = 300.0


class BenchError(Exception):
    """Something did not work the way it must; the figures would mean nothing."""


def run_id() -> str:
    """Short, unique, valid as a stack name, compose project name and container name part."""
    return f"aib{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class CommandResult:
    code: int
    output: str
    seconds: float


async def run_command(*argv: str, check: bool = True,
                      timeout: float = COMMAND_TIMEOUT_S) -> CommandResult:
    """Run argv (stdout and stderr together), timed from exec to exit."""
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"{' '.join(argv)} took more than {timeout:g}s") from None
    seconds = time.monotonic() - began
    result = CommandResult(process.returncode or 0, output.decode(errors="replace"), seconds)
    if check and result.code != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.code}:\n{result.output.strip()}")
    return result


async def require_image(image: str = IMAGE) -> None:
    probe = await run_command("docker", "image", "inspect", "--format", "{{.Id}}", image,
                              check=False)
    if probe.code != 0:
        raise BenchError(f"image {image} missing or engine unreachable ({probe.output.strip()}):"
                         " run scripts/bootstrap.sh")


async def container_ids(label: str, value: str) -> list[str]:
    """Containers (running or not) labelled label=value."""
    listed = await run_command("docker", "ps", "-aq", "--no-trunc", "--filter",
                               f"label={label}={value}")
    return listed.output.split()


async def remove_labelled(label: str, value: str) -> int:
    """Force-remove every container labelled label=value; how many there were."""
    ids = await container_ids(label, value)
    if ids:
        await run_command("docker", "rm", "-f", "-v", *ids, check=False)
    return len(ids)


async def require_gone(label: str, value: str, what: str) -> None:
    left = await container_ids(label, value)
    if left:
        raise BenchError(f"{what}: {len(left)} container(s) labelled {label}={value} remain")


@dataclass
class EnvManager:
    daemon: DaemonProcess
    stub: EnvManagerServiceAsyncStub


@contextlib.asynccontextmanager
async def env_manager(workdir: Path, config: Path, *,
                      args: Sequence[str] = ()) -> AsyncIterator[EnvManager]:
    """An env-manager subprocess serving `config`, with a state dir of its own; READY=1 on entry."""
    state = workdir / f"state-{uuid.uuid4().hex[:8]}"
    async with running_daemon(
        "env-manager", workdir,
        args=["--config", str(config), "--state-dir", str(state), *args],
    ) as daemon:
        # The stub is the aio one on an aio channel; grpc is untyped, so the overload cannot tell.
        stub = cast("EnvManagerServiceAsyncStub",
                    env_manager_pb2_grpc.EnvManagerServiceStub(daemon.channel()))
        yield EnvManager(daemon, stub)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"
