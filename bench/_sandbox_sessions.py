"""bench/sandbox.py's "sandbox sessions" section (issue 13), measured in the same run.

  exec           --serial rounds, one call of each side per round (the order alternating),
                 of a trivial command (`true`) in one running sandbox (class cpu_cold: made
                 cold, so the warm pool stays settled for the next part):
                   SandboxExec       the RPC at env-manager, from its call to the exit message.
                   aiodocker exec    the engine's exec API on the same container straight from
                                     this process: create, start (attached), read to EOF,
                                     inspect for the exit code.
                   docker exec       the `docker exec CONTAINER true` CLI, as a subprocess.
                 Targets (p50): SandboxExec <= 1.2x aiodocker exec, <= 0.6x docker exec.
                 SandboxExec goes through the sandbox's command loop (sandboxes/fast.py); the
                 execs that went the exec API's way instead are counted from env-manager's log
                 (`sandbox_exec_fallback`): 0 expected.
  create+exec    --serial times: the stack settled (the pool full, nothing else), then
                 CreateSandbox on cpu_warm and SandboxExec `true` to its exit message; p50 of
                 that, and of each part. Target: p50 < 100 ms, every one from a warm container.
                 Each sandbox is deleted after (not timed).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from agent_infra.wire import env_manager_pb2 as em_pb

from bench._support import BenchError, median, run_command
from tests.daemon_support import log_records

if TYPE_CHECKING:
    from bench.sandbox import Context, Section

TARGET_RAW, TARGET_CLI, TARGET_CREATE_MS = 1.2, 0.6, 100.0
CALL_TIMEOUT_S = 60.0


async def create(ctx: Context, workload_class: str) -> str:
    answer = await ctx.em.stub.CreateSandbox(em_pb.CreateSandboxRequest(
        workload_class=workload_class), timeout=CALL_TIMEOUT_S)
    return str(answer.sandbox_id)


async def sandbox_exec(ctx: Context, sandbox_id: str, command: list[str]) -> None:
    code = None
    async for item in ctx.em.stub.SandboxExec(em_pb.SandboxExecRequest(
            sandbox_id=sandbox_id, command=command), timeout=CALL_TIMEOUT_S):
        if item.exited:
            code = item.exit_code
    if code != 0:
        raise BenchError(f"SandboxExec {command} in {sandbox_id[:6]}...: exit {code}")


async def delete(ctx: Context, sandbox_id: str) -> None:
    await ctx.em.stub.DeleteSandbox(em_pb.DeleteSandboxRequest(sandbox_id=sandbox_id),
                                    timeout=CALL_TIMEOUT_S)


async def container_of(ctx: Context) -> str:
    """The id of the run's one cold sandbox container."""
    found = await ctx.docker.containers.list(filters={"label": [
        f"org.agent-infra.stack={ctx.label}", "org.agent-infra.kind=sandbox"]})
    if len(found) != 1:
        raise BenchError(f"expected one sandbox container in the stack, found {len(found)}")
    return str(found[0].id)


def fallbacks(ctx: Context) -> int:
    """How many SandboxExecs so far went the exec API's way, not the command loop's (its log)."""
    return sum(r.get("event") == "sandbox_exec_fallback"
               for r in log_records(ctx.em.daemon.log_text()))


def warm_creations(ctx: Context) -> list[bool]:
    """Whether each sandbox env-manager made so far took a warm container (its log)."""
    return [bool(r.get("warm")) for r in log_records(ctx.em.daemon.log_text())
            if r.get("event") == "sandbox_created"]


async def raw_exec(ctx: Context, container_id: str) -> None:
    container = ctx.docker.containers.container(container_id)
    execution = await container.exec(["true"], stdout=True, stderr=True,
                                     user="65534:65534", workdir="/tmp/sandbox")
    async with execution.start(detach=False) as stream:
        while await stream.read_out() is not None:
            pass
    while True:
        info = await execution.inspect()
        if not info.get("Running"):
            break
    if info.get("ExitCode") != 0:
        raise BenchError(f"raw exec exited {info.get('ExitCode')}")


async def cli_exec(container_id: str) -> None:
    await run_command("docker", "exec", "-u", "65534:65534", "-w", "/tmp/sandbox", container_id,
                      "true")


def _ms(seconds: float) -> float:
    return seconds * 1000


async def section(ctx: Context) -> Section:
    from bench.sandbox import COLD_CLASS, WARM_CLASS, Section

    rounds = ctx.args.serial
    result = Section()
    sandbox_id = await create(ctx, COLD_CLASS)
    fallen_before = fallbacks(ctx)
    try:
        container_id = await container_of(ctx)
        for _ in range(3):  # warm-up: the connections of each side
            await sandbox_exec(ctx, sandbox_id, ["true"])
            await raw_exec(ctx, container_id)
        sides = {
            "SandboxExec (env-manager)": lambda: sandbox_exec(ctx, sandbox_id, ["true"]),
            "aiodocker exec (same container)": lambda: raw_exec(ctx, container_id),
            "docker exec CLI (same container)": lambda: cli_exec(container_id),
        }
        times: dict[str, list[float]] = {side: [] for side in sides}
        for number in range(rounds):
            order = list(sides) if number % 2 else list(reversed(sides))
            for side in order:
                began = time.perf_counter()
                await sides[side]()
                times[side].append(time.perf_counter() - began)
    finally:
        await delete(ctx, sandbox_id)
    fallen = fallbacks(ctx) - fallen_before
    p50 = {side: _ms(median(values)) for side, values in times.items()}
    ours, raw, cli = p50.values()
    ok_raw, ok_cli = ours / raw <= TARGET_RAW, ours / cli <= TARGET_CLI
    result.lines += [
        f"exec: {rounds} rounds, `true` in one running sandbox, the three sides alternating",
        *(f"  {side:<44}p50 {value:6.1f} ms" for side, value in p50.items()),
        f"  SandboxExec / aiodocker exec {ours / raw:.2f}x (target <= {TARGET_RAW}x) "
        f"{'PASS' if ok_raw else 'FAIL'}; / docker exec {ours / cli:.2f}x (target <= "
        f"{TARGET_CLI}x) {'PASS' if ok_cli else 'FAIL'}",
        f"  SandboxExecs that fell back to the exec API: {fallen} of {rounds + 3}",
    ]
    parts: dict[str, list[float]] = {"total": [], "CreateSandbox": [], "first SandboxExec": []}
    before = len(warm_creations(ctx))
    for _ in range(rounds):
        await ctx.settle()
        began = time.perf_counter()
        sandbox_id = await create(ctx, WARM_CLASS)
        created = time.perf_counter()
        try:
            await sandbox_exec(ctx, sandbox_id, ["true"])
            done = time.perf_counter()
        finally:
            await delete(ctx, sandbox_id)
        parts["total"].append(done - began)
        parts["CreateSandbox"].append(created - began)
        parts["first SandboxExec"].append(done - created)
    await asyncio.sleep(0.2)  # the log lines of the last calls
    made = warm_creations(ctx)[before:]
    cold = rounds - sum(made)
    total = _ms(median(parts["total"]))
    ok_create = total < TARGET_CREATE_MS and cold == 0
    result.passed = ok_raw and ok_cli and ok_create
    result.lines += [
        f"create+exec: {rounds} times, pool full and stack settled before each; "
        f"{rounds - cold} of {rounds} took a warm container",
        *(f"  {part:<44}p50 {_ms(median(values)):6.1f} ms" for part, values in parts.items()),
        f"  CreateSandbox to the first exec's exit p50 {total:.1f} ms (target < "
        f"{TARGET_CREATE_MS:g} ms) {'PASS' if ok_create else 'FAIL'}",
    ]
    return result
