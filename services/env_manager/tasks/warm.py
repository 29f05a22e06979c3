"""Warm containers: a class's containers created and started ahead, each handed exactly one job.

A class with `warm = N` keeps up to N containers ready: made by the same builder as a cold task's
container (tasks/container.container_config: the class's user, cap_drop ALL, no-new-privileges,
pids and memory limits, network, mounts), started, with their stdout/stderr and stdin attached,
waiting in the hand-over stub (tasks/handover.py). They carry the label kind=warm, never a task
id, so nothing takes one for a task but a claim.

The interface (for tasks and for anything else that wants a fresh container fast):

    container = await pool.claim(class_name, image)   # WarmContainer, or None: go the cold way
    await pool.hand_over(container, argv, env, workdir, stdin)   # the stub execs argv
    pool.discard(container)                           # remove it (in the background)

`claim` never waits on the engine: it takes a ready container or returns None (only the class's
default image is kept warm). The claimer owns the container from then on: it must hand it over
(or discard it) and remove it when done (`discard`, or its own removal), and record it durably
before the hand-over if it must survive a restart, because at start-up (TaskRunner.recover) the
pool removes every warm container of the stack that no owner claims: register the owner before
that (`register_owner(async () -> set of container ids)`). An unclaimed warm container is
garbage, never a task; a claimed one keeps its labels (kind=warm, the class), which the engine
cannot change. `handover.fits` says whether an argv/env/workdir can be handed over at all. A
hand-over's stdin (None: none) follows on the container's stdin, which is then closed; the
command runs as the container's main process (a keep-alive command for a sandbox, say).
`container.output` is its attached stdout/stderr: read it, or `close_streams()` after the
hand-over. `count_busy(fn)` makes the pool count what the claimer keeps (fn(class) -> int)
against the class's concurrency. The pool of a daemon is `EnvManager.runner.warm`.

Refills run in the background, one container at a time per class, never on a task's path.
The pool stays within the class's budget: ready containers plus the class's running tasks
(`busy`) never exceed its concurrency, so its containers never hold more than concurrency x
memory. A ready container older than `warm_max_age` is replaced. The pool empties when a class
is disabled or its warm goes to 0, on every reload (`configure`: then it refills per the new
config) and at shutdown (`aclose`: nothing left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from agent_infra.runtime.logs import get_logger

from .. import labels
from ..docker import containers
from ..docker.attach import Attachment
from ..docker.engine import DockerEngine
from .container import _NAME_UNSAFE, container_config, create, remove
from .handover import new_mark, script, stub_command
from .payload import TaskSpec
from .workloads import WorkloadClass

log = get_logger("tasks")

# After a failed refill (image missing, engine down), the next try waits this long, doubling.
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
REFILL_DELAY_S = 0.5
Owner = Callable[[], Awaitable[set[str]]]


@dataclass(eq=False)
class WarmContainer:
    id: str
    name: str
    workload_class: str
    image: str
    mark: str  # the stub's mark (tasks/handover.refusal)
    made_at: float  # time.monotonic()
    output: Attachment  # stdout and stderr, attached before the start
    inlet: Attachment  # stdin: the hand-over, then the job's stdin
    # While ready: waits on `output`, which stays silent until a hand-over; anything on it (its
    # end: the container died, or the engine went away) makes the container unfit to take one.
    watch: asyncio.Task[None] | None = None

    async def close_streams(self) -> None:
        for attachment in (self.inlet, self.output):
            with contextlib.suppress(Exception):
                await attachment.close()


class WarmPool:
    def __init__(self, engine: DockerEngine, stack: str, busy: Callable[[str], int]) -> None:
        """`busy(class)`: the class's running tasks (slots in use)."""
        self.engine = engine
        self.stack = stack
        self._busy = busy
        self._classes: dict[str, WorkloadClass] = {}
        self._output_limit = 0
        self._ready: dict[str, deque[WarmContainer]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._removals: set[asyncio.Task[None]] = set()
        self._owners: list[Owner] = []
        self._more_busy: list[Callable[[str], int]] = []
        self._generation = 0
        self._started = False
        self._closing = False

    # -- the interface ----------------------------------------------------------------------------

    async def claim(self, workload_class: str, image: str) -> WarmContainer | None:
        """A ready warm container of the class running `image`, now the caller's; None if none."""
        workload = self._classes.get(workload_class)
        ready = self._ready.get(workload_class)
        if workload is None or not ready or image != workload.image or self._closing:
            return None
        found = None
        while ready and found is None:
            container = ready.popleft()
            if time.monotonic() - container.made_at < workload.warm_max_age:
                found = container
            else:
                self.discard(container)
        if found is not None and found.watch is not None:
            found.watch.cancel()  # its output is the claimer's to read now
            await asyncio.gather(found.watch, return_exceptions=True)
            found.watch = None
        # The refill waits for the task to end (the runner wakes the keeper then) or for
        # REFILL_DELAY_S: a short task's container lifecycle never competes with its refill.
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.wake, workload_class)
        return found

    async def hand_over(self, container: WarmContainer, argv: Sequence[str],
                        env: Mapping[str, str], workdir: str | None,
                        stdin: bytes | None = None, *, keep_stdin_open: bool = False) -> None:
        """Send the hand-over (argv, env, workdir) and `stdin`, then close the container's stdin
        (with `keep_stdin_open`, leave it open for what follows, e.g. a sandbox's command loop,
        and raise what a broken stream raises). Check handover.fits first. Returns once written
        (not when the command ends)."""
        data = script(argv, env, workdir) + (stdin or b"")
        if keep_stdin_open:
            await container.inlet.write(data)
        else:
            await container.inlet.send_stdin(data)

    def discard(self, container: WarmContainer) -> None:
        """Remove a container (claimed or not) in the background."""
        self._spawn(self._remove(container))

    def register_owner(self, owner: Owner) -> None:
        """`owner()` gives the ids of warm containers it claimed and recorded: the start-up sweep
        keeps those (every other warm container of the stack is removed)."""
        self._owners.append(owner)

    def count_busy(self, busy: Callable[[str], int]) -> None:
        """Count `busy(class)` (e.g. a class's live sandboxes, each in a claimed container)
        against the class's concurrency too, besides its running tasks; wake() when it drops."""
        self._more_busy.append(busy)

    def wake(self, workload_class: str) -> None:
        """Something changed the class's budget (a task ended): let its keeper look again."""
        event = self._wake.get(workload_class)
        if event is not None:
            event.set()

    def ready(self, workload_class: str) -> int:
        return len(self._ready.get(workload_class, ()))

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> int:
        """Remove the warm containers an earlier process left (but those an owner claimed), then
        start filling; how many were removed. Call once, after task recovery."""
        removed = await self._sweep("left unclaimed by an earlier process")
        self._started = True
        self._keep_classes()
        return removed

    async def _sweep(self, reason: str) -> int:
        """Remove every warm container of the stack that no owner claims; how many."""
        keep: set[str] = set()
        for owner in self._owners:
            keep |= await owner()
        found = await containers.list_containers(
            self.engine, labels.label_filter(**{labels.STACK: self.stack,
                                                labels.KIND: labels.KIND_WARM}),
            what="list warm containers")
        garbage = [listed.id for listed in found if listed.id not in keep]
        await asyncio.gather(*(remove(self.engine, cid) for cid in garbage),
                             return_exceptions=True)
        if garbage:
            log.info("warm_containers_removed", count=len(garbage), reason=reason)
        return len(garbage)

    def configure(self, classes: Mapping[str, WorkloadClass], output_limit: int) -> None:
        """Apply a (re)loaded config: every ready container goes, the pool refills per it."""
        self._classes = dict(classes)
        self._output_limit = output_limit
        self._generation += 1
        for ready in self._ready.values():
            while ready:
                self.discard(ready.popleft())
        for event in self._wake.values():
            event.set()
        self._keep_classes()

    async def aclose(self) -> None:
        """Stop refilling and remove every ready container; claimed ones are their owners'."""
        self._closing = True
        keepers = list(self._keepers.values())
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for ready in self._ready.values():
            while ready:
                self.discard(ready.popleft())
        while self._removals:
            await asyncio.gather(*list(self._removals), return_exceptions=True)
        if self._started:
            # A refill cut short may have left a container the engine made but never named to
            # us: nothing unclaimed is left behind.
            with contextlib.suppress(Exception):  # the engine is gone: the next start sweeps
                await self._sweep("shutdown")

    # -- keeping each class filled ----------------------------------------------------------------

    def _keep_classes(self) -> None:
        if not self._started or self._closing:
            return
        for name, workload in self._classes.items():
            keeper = self._keepers.get(name)
            if workload.warm and workload.concurrency and (keeper is None or keeper.done()):
                self._wake[name] = self._wake.get(name) or asyncio.Event()
                self._ready.setdefault(name, deque())
                self._keepers[name] = asyncio.create_task(self._keep(name),
                                                          name=f"warm pool {name}")

    def _wanted(self, name: str) -> bool:
        workload = self._classes.get(name)
        if workload is None or self._closing:
            return False
        ready = len(self._ready[name])
        busy = self._busy(name) + sum(more(name) for more in self._more_busy)
        return ready < workload.warm and ready + busy < workload.concurrency

    async def _keep(self, name: str) -> None:
        event, ready = self._wake[name], self._ready[name]
        delay = RETRY_INITIAL_S
        while True:
            event.clear()
            workload = self._classes.get(name)
            if workload is None or not workload.warm or not workload.concurrency:
                return  # configure() starts a keeper again when the class wants one
            now = time.monotonic()
            while ready and now - ready[0].made_at >= workload.warm_max_age:
                self.discard(ready.popleft())
            if self._wanted(name):
                generation = self._generation
                try:
                    container = await self._make(name, workload)
                except Exception as exc:
                    log.warning("warm_container_not_made", workload_class=name, error=str(exc),
                                retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_INITIAL_S
                if generation != self._generation or not self._wanted(name):
                    self.discard(container)  # the config changed (or a task took the room)
                else:
                    ready.append(container)
                    container.watch = asyncio.create_task(self._watch(container, ready))
                continue
            timeout = (ready[0].made_at + workload.warm_max_age - now) if ready else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()

    async def _make(self, name: str, workload: WorkloadClass) -> WarmContainer:
        mark = new_mark()
        # The cold builder, for a job that is not known yet: the stub, no env, stdin open.
        spec = TaskSpec(task_id="warm", workload_class=name, image=workload.image,
                        command=stub_command(mark), env=(), stdin=b"", workdir=None,
                        timeout=0.0, timeout_capped=False)
        config = container_config(spec, workload, self.stack, self._output_limit)
        config["Labels"] = {labels.STACK: self.stack, labels.KIND: labels.KIND_WARM,
                            labels.WORKLOAD_CLASS: name}
        cname = f"{self.stack}-warm-{_NAME_UNSAFE.sub('_', name)}-{secrets.token_hex(4)}"
        container_id = await create(self.engine, config, cname)
        output = Attachment(self.engine, container_id, stdin=False)
        inlet = Attachment(self.engine, container_id, stdin=True)
        made = WarmContainer(container_id, cname, name, workload.image, mark, 0.0, output,
                             inlet)
        try:
            await output.open()
            await inlet.open()
            await containers.start(self.engine, container_id)
        except BaseException:
            self.discard(made)
            raise
        made.made_at = time.monotonic()
        return made

    async def _watch(self, container: WarmContainer, ready: deque[WarmContainer]) -> None:
        try:
            chunk = await container.output.read()
        except Exception as exc:
            chunk, reason = None, str(exc)
        else:
            reason = "its output ended" if chunk is None else "it wrote before a hand-over"
        if container in ready:
            ready.remove(container)
            log.warning("warm_container_unfit", container_id=container.id, reason=reason)
            container.watch = None
            self.discard(container)
            self.wake(container.workload_class)

    async def _remove(self, container: WarmContainer) -> None:
        watch = container.watch
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await container.close_streams()
        try:
            await remove(self.engine, container.id)
        except Exception as exc:  # the next start's sweep removes it
            log.warning("warm_container_not_removed", container_id=container.id, error=str(exc))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
