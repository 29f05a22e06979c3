"""Sandbox sessions: the registry of live sandboxes, their limits, reaping and re-adoption.

- CreateSandbox makes a container of the class (sandboxes/provision.py) and returns an
  unguessable id. At most `sandbox.max_sandboxes` per class live at once (RESOURCE_EXHAUSTED
  beyond). TTL and idle timeout default to the class's and are capped at its maxima.
- Only the creator uses a sandbox: its owner is the hash of the caller's token hash and the
  `on_behalf_of` it vouches for. Anyone else, like an unknown, deleted or reaped id, gets
  NOT_FOUND (which does not tell them the sandbox exists).
- A reaper deletes sandboxes past their TTL, or idle (no call, no exec running) past their idle
  timeout, logging `sandbox_reaped` with the reason.
- Delete removes the container with its filesystem (and anonymous volumes): nothing persists.
- Daemon shutdown leaves sandboxes running. A new env-manager process re-adopts every running
  sandbox of its stack, found by its container's labels (made cold) or its record in the state
  dir (made from a warm container; records.py), TTL kept and idle time counted from the
  adoption, and removes ("reaps") any that is stopped, expired or unreadable; logged as
  `sandbox_adopted` / `sandbox_reaped` (reason `restart`).
- SandboxExec runs the command through the sandbox's command loop (fast.py, loop.py) when it
  can, else through the engine's exec API (execs.py): a re-adopted sandbox (its attach went
  with the old process), a second exec while one runs, a request the loop cannot frame, or a
  broken loop. Each such exec logs `sandbox_exec_fallback` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from agent_infra.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.engine import DockerEngine
from ..tasks.container import remove
from ..tasks.payload import check_class
from ..tasks.warm import WarmPool
from ..tasks.workloads import WorkloadClass
from . import execs, files
from .fast import FastChannel
from .model import (
    KIND_SANDBOX,
    MAX_STDIN_BYTES,
    Sandbox,
    check_command,
    check_env,
    check_id,
    check_workdir,
    key_of,
    new_id,
    sandbox_path,
)
from .provision import provision
from .records import Records

log = get_logger("sandboxes")

REAP_INTERVAL = 0.5
MAX_EXECS_PER_SANDBOX = 16


class SandboxManager:
    def __init__(self, engine: DockerEngine, stack: str, classes: Mapping[str, WorkloadClass],
                 pool: WarmPool | None = None, records_dir: Path | None = None) -> None:
        """`pool`: warm containers to take when one fits (None: always cold); `records_dir`:
        where sandboxes made from warm containers are recorded (records.py)."""
        self.engine = engine
        self.stack = stack
        self.classes = dict(classes)
        self._records = Records(records_dir)
        self._pool = pool if records_dir is not None else None
        if self._pool is not None:
            # The pool's sweeps keep the warm containers recorded as sandboxes, and its refills
            # count the class's live sandboxes against the class's concurrency (each holds a
            # container of the class's memory), so the pool stays within the class's budget.
            self._pool.register_owner(self._records.container_ids)
            self._pool.count_busy(self._count)
        self._sandboxes: dict[str, Sandbox] = {}  # by key_of(id)
        self._channels: dict[str, FastChannel] = {}  # by key_of(id): made here, not adopted
        self._creating: dict[str, int] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over the sandboxes an earlier process left (see the module docstring); start
        the reaper."""
        filters = labels.label_filter(**{labels.STACK: self.stack, labels.KIND: KIND_SANDBOX})
        found = await containers.list_containers(self.engine, filters,
                                                 what="list sandbox containers")
        for listed in found:
            info = await self._inspect(listed.id)
            if info is not None:
                await self._adopt_one(listed.id, info, Sandbox.from_container(info))
        for path, record in await self._records.load():
            sandbox = Sandbox.from_record(record) if record is not None else None
            info = await self._inspect(sandbox.container_id) if sandbox is not None else None
            if sandbox is None or info is None:
                await asyncio.to_thread(path.unlink, missing_ok=True)  # nothing to adopt
                continue
            if not await self._adopt_one(sandbox.container_id, info, sandbox):
                await self._records.delete(sandbox)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _inspect(self, container_id: str) -> dict[str, object] | None:
        try:
            return await containers.inspect(self.engine, container_id)
        except NotFound:
            return None

    async def _adopt_one(self, container_id: str, info: Mapping[str, object],
                         sandbox: Sandbox | None) -> bool:
        """Adopt a sandbox a restart found; remove its container instead when it is stopped,
        expired or unreadable. Whether it was adopted."""
        state = info.get("State")
        running = isinstance(state, dict) and bool(state.get("Running"))
        if sandbox is None or not running or time.time() >= sandbox.expires_at:
            reason = "unreadable" if sandbox is None else ("stopped" if not running else "ttl")
            await remove(self.engine, container_id)
            log.info("sandbox_reaped", container_id=container_id[:12], reason="restart",
                     detail=reason)
            return False
        if sandbox.key not in self._sandboxes:
            self._sandboxes[sandbox.key] = sandbox
            log.info("sandbox_adopted", container_id=container_id[:12],
                     workload_class=sandbox.workload_class, warm=sandbox.warm)
        return True

    async def close(self) -> None:
        """Stop the reaper; the sandboxes stay for the next process (their loops wait)."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    def reconfigure(self, classes: Mapping[str, WorkloadClass]) -> None:
        """New sandboxes take the new classes; live ones keep what they were made with."""
        self.classes = dict(classes)

    # -- the RPCs ------------------------------------------------------------------------------

    async def create(self, workload_class: str, image: str, env: Mapping[str, str],
                     ttl_seconds: int, idle_timeout_seconds: int, owner: str) -> Sandbox:
        workload = check_class(workload_class, self.classes)
        limits = workload.sandbox
        if image and image not in workload.allowed_images:
            raise InvalidArgument(
                f"image {image!r:.200} is not allowed for workload_class {workload_class!r}; "
                f"allowed: {', '.join(workload.allowed_images)}")
        ttl = _duration("ttl_seconds", ttl_seconds, limits.default_ttl, limits.max_ttl)
        idle = _duration("idle_timeout_seconds", idle_timeout_seconds,
                         limits.default_idle_timeout, limits.max_idle_timeout)
        env = {**workload.env, **check_env(env, "env")}
        live = self._count(workload_class) + self._creating.get(workload_class, 0)
        if live >= limits.max_sandboxes:
            raise ResourceExhausted(
                f"workload_class {workload_class!r} has {live} sandboxes, its limit "
                f"(sandbox.max_sandboxes = {limits.max_sandboxes}); delete one first")
        now = time.time()
        sandbox = Sandbox(sandbox_id=new_id(), owner=owner, workload_class=workload_class,
                          image=image or workload.image, container_id="", created_at=now,
                          expires_at=now + ttl, idle_timeout=idle, env=env,
                          workdir=limits.workdir, user=workload.user)
        self._creating[workload_class] = self._creating.get(workload_class, 0) + 1
        try:
            sandbox.container_id, channel = await provision(self.engine, self.stack, workload,
                                                            sandbox, self._pool, self._records)
        finally:
            self._creating[workload_class] -= 1
        sandbox.touch()
        self._sandboxes[sandbox.key] = sandbox
        if channel is not None:
            self._channels[sandbox.key] = channel
        log.info("sandbox_created", container_id=sandbox.container_id[:12],
                 workload_class=workload_class, ttl_s=ttl, idle_timeout_s=idle,
                 warm=sandbox.warm)
        return sandbox

    def get(self, sandbox_id: str, owner: str) -> Sandbox:
        """The caller's sandbox; NotFound for an unknown id or another caller's sandbox."""
        found = self._sandboxes.get(key_of(check_id(sandbox_id)))
        if found is None or found.deleted or not hmac.compare_digest(found.owner, owner):
            raise NotFound("sandbox_id: no such sandbox (unknown, deleted, expired, or not "
                           "the caller's)")
        found.touch()
        return found

    def owned(self, owner: str, workload_class: str = "") -> list[Sandbox]:
        if workload_class and workload_class not in self.classes:
            raise InvalidArgument(f"workload_class {workload_class!r:.80} is unknown; known "
                                  f"classes: {', '.join(sorted(self.classes))}")
        return sorted((s for s in self._sandboxes.values()
                       if hmac.compare_digest(s.owner, owner) and not s.deleted
                       and (not workload_class or s.workload_class == workload_class)),
                      key=lambda s: s.created_at)

    async def exec(self, sandbox_id: str, owner: str, command: list[str], stdin: bytes,
                   env: Mapping[str, str], timeout_seconds: int,
                   workdir: str) -> AsyncIterator[execs.Chunk | execs.Exit]:
        sandbox = self.get(sandbox_id, owner)
        check_command(command)
        extra = check_env(env, "env")
        where = check_workdir(workdir, sandbox.workdir)
        if len(stdin) > MAX_STDIN_BYTES:
            raise InvalidArgument(f"stdin is {len(stdin)} bytes, over the limit of "
                                  f"{MAX_STDIN_BYTES}")
        if timeout_seconds < 0:
            raise InvalidArgument(f"timeout_seconds must be 0 (class default) or positive; "
                                  f"got {timeout_seconds}")
        workload = self.classes.get(sandbox.workload_class)
        default, most = ((workload.default_timeout, workload.max_timeout) if workload
                         else (300.0, 3600.0))
        timeout = min(float(timeout_seconds) if timeout_seconds else default, most)
        limit = workload.sandbox.output_limit_bytes if workload else 1024 * 1024
        if sandbox.running_execs >= MAX_EXECS_PER_SANDBOX:
            raise ResourceExhausted(f"the sandbox runs {sandbox.running_execs} commands, the "
                                    f"most it may at once")
        channel = self._channels.get(sandbox.key)
        why = (channel.refusal(command, extra, where, stdin or None) if channel is not None
               else "no fast channel (re-adopted, or its loop never started)")
        if why is not None:
            log.info("sandbox_exec_fallback", container_id=sandbox.container_id[:12],
                     reason=why)
        sandbox.running_execs += 1
        try:
            if channel is not None and why is None:
                # The loop has the sandbox's env already (its container's, or the hand-over's).
                items = channel.run(self.engine, command, env=extra, workdir=where,
                                    stdin=stdin or None, timeout=timeout, output_limit=limit)
            else:
                items = execs.run(self.engine, sandbox.container_id, command,
                                  env={**sandbox.env, **extra}, workdir=where,
                                  user=sandbox.user, stdin=stdin or None, timeout=timeout,
                                  output_limit=limit)
            async with contextlib.aclosing(items):  # a caller gone: its finally (kill) now
                async for item in items:
                    yield item
        except FailedPrecondition:
            raise FailedPrecondition("sandbox_id: the sandbox's container is not running "
                                     "(stopped from outside, or being deleted)") from None
        finally:
            sandbox.running_execs -= 1
            sandbox.touch()

    async def put_file(self, sandbox_id: str, owner: str, path: str, content: bytes,
                       mode: int) -> tuple[str, int]:
        sandbox = self.get(sandbox_id, owner)
        full = sandbox_path(path, sandbox.workdir)
        limit = self._file_limit(sandbox)
        if len(content) > limit:
            raise InvalidArgument(f"content is {len(content)} bytes, over the limit of {limit} "
                                  "(sandbox.max_file_bytes)")
        if not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode must be permission bits 0-07777 (0: 0644); got {mode}")
        await files.put(self.engine, sandbox.container_id, sandbox.user, sandbox.workdir, full,
                        content, (mode or 0o644) & 0o777)
        sandbox.touch()
        return full, len(content)

    async def get_file(self, sandbox_id: str, owner: str, path: str) -> tuple[str, bytes]:
        sandbox = self.get(sandbox_id, owner)
        full = sandbox_path(path, sandbox.workdir)
        data = await files.get(self.engine, sandbox.container_id, sandbox.user,
                               sandbox.workdir, full, self._file_limit(sandbox))
        sandbox.touch()
        return full, data

    async def delete(self, sandbox_id: str, owner: str) -> None:
        sandbox = self.get(sandbox_id, owner)
        await self._delete(sandbox, "deleted")

    # -- inside --------------------------------------------------------------------------------

    def _count(self, workload_class: str) -> int:
        return sum(s.workload_class == workload_class and not s.deleted
                   for s in self._sandboxes.values())

    def _file_limit(self, sandbox: Sandbox) -> int:
        workload = self.classes.get(sandbox.workload_class)
        return workload.sandbox.max_file_bytes if workload else 1024 * 1024

    async def _delete(self, sandbox: Sandbox, reason: str) -> None:
        sandbox.deleted = True
        channel = self._channels.pop(sandbox.key, None)
        if channel is not None:
            await channel.close()
        try:
            await remove(self.engine, sandbox.container_id)
        except BaseException:
            sandbox.deleted = False  # still there: a later delete or the reaper tries again
            raise
        self._sandboxes.pop(sandbox.key, None)
        if sandbox.warm:
            await self._records.delete(sandbox)
        if self._pool is not None:
            self._pool.wake(sandbox.workload_class)  # room for a refill again
        event = "sandbox_deleted" if reason == "deleted" else "sandbox_reaped"
        log.info(event, container_id=sandbox.container_id[:12],
                 workload_class=sandbox.workload_class, reason=reason,
                 age_s=round(time.time() - sandbox.created_at, 1))

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            now = time.time()
            for sandbox in list(self._sandboxes.values()):
                reason = sandbox.reap_reason(now)
                if reason and not sandbox.deleted:
                    with contextlib.suppress(Exception):  # the engine is down: next round
                        await self._delete(sandbox, reason)


def _duration(name: str, asked: int, default: float, most: float) -> float:
    if asked < 0:
        raise InvalidArgument(f"{name} must be 0 (class default) or positive; got {asked}")
    if asked > most:
        raise InvalidArgument(f"{name} {asked} is over the class's maximum of {most:g} s")
    return float(asked) if asked else default
