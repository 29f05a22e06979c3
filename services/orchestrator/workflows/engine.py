"""Runs workflows: each ready step becomes a task; each finished task moves its run on.

The store decides (advance_run: which steps are ready, which are skipped, when the run is over);
this engine submits the ready steps' tasks and reacts to their terminal states. A step's task id
is derived from its run and step, so a resumed run resubmits the same task, which the scheduler
treats as the same (idempotent) submit. Runs resume after a restart from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping

from agent_infra.runtime.errors import DomainError, InvalidArgument
from agent_infra.runtime.logs import get_logger

from ..model import Task, TaskRequest, TaskState
from ..scheduler import Scheduler
from ..store import Store
from . import nodes, repository
from .logic import StepStatus
from .records import Run, Workflow
from .spec import StepSpec, WorkflowSpec, parse_document, validate_workflow_id

log = get_logger("workflows")


class WorkflowEngine:
    def __init__(self, store: Store, scheduler: Scheduler, known_classes: Collection[str]
                 ) -> None:
        self._store = store
        self._scheduler = scheduler
        self.known_classes = set(known_classes)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._watchers: defaultdict[str, set[asyncio.Queue[Run]]] = defaultdict(set)
        self._pending: set[asyncio.Task[None]] = set()
        # What a training node without a command runs on Slurm ([slurm] training_command).
        self.training_command: tuple[str, ...] = ()
        # The executor's payload contract check (executors/contracts.py), when it has one.
        self.payload_check: Callable[[str, Mapping[str, str]], Awaitable[None]] | None = None
        scheduler.listeners.append(self._on_task)

    async def start(self) -> None:
        await repository.ensure_schema(self._store)

    async def resume(self) -> None:
        """Move on every unfinished run, including steps whose task ended while we were down.
        A run that cannot be moved on (unreadable, unrenderable: any error) fails with the
        reason; it never stops the daemon from starting."""
        for run_id in await repository.unfinished_run_ids(self._store):
            try:
                await self._resume_run(run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._abandon(run_id, exc)

    async def _resume_run(self, run_id: str) -> None:
        run = await repository.get_run(self._store, run_id)
        for step in run.steps.values():
            if step.status == StepStatus.RUNNING and step.task_id:
                with contextlib.suppress(DomainError):
                    task = await self._scheduler.get(step.task_id)
                    if task.status.terminal:
                        await self._step_done(task)
        await self._advance(run_id)

    async def _abandon(self, run_id: str, exc: BaseException) -> None:
        """Contain an error to the one run it concerns: log it, fail the run with the reason."""
        reason = f"internal error: {type(exc).__name__}: {str(exc)[:500]}"
        log.error("workflow_run_failed_internally", run_id=run_id, error=reason,
                  exc_info=not isinstance(exc, DomainError))
        try:
            if await repository.abandon_run(self._store, run_id, reason):
                self._publish(await repository.get_run(self._store, run_id))
        except Exception:
            log.exception("workflow_run_not_failed", run_id=run_id)

    async def stop(self) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def create(self, workflow_id: str, name: str, description: str, spec: bytes | str,
                     *, must_exist: bool = False) -> tuple[str, int, bool]:
        """(workflow id, version, created). `spec` is the steps form or the composer's typed
        graph, either alone or as a whole document with its id, name and description (the
        arguments win when given; they must agree with the document's). Without an id one is
        made: `wf-` + 16 hex digits. must_exist: a replace (PUT), NotFound for a new id."""
        header, parsed = parse_document(spec, self.known_classes)
        for key, given in (("id", workflow_id), ("name", name), ("description", description)):
            inside = header.get(key, "")
            if given and inside and inside != given:
                raise InvalidArgument(f"{key} {given[:140]!r} differs from the {key} "
                                      f"{inside[:140]!r} in the workflow document")
        workflow_id = workflow_id or header.get("id", "") or f"wf-{secrets.token_hex(8)}"
        name = name or header.get("name", "")
        description = description or header.get("description", "")
        validate_workflow_id(workflow_id)
        if parsed.graph is not None and not name.strip():
            raise InvalidArgument("name is required")
        self._check_runnable(parsed)
        await self._check_payloads(workflow_id, parsed)
        if must_exist:
            await repository.get_workflow(self._store, workflow_id)
        version, created = await repository.create_workflow(
            self._store, workflow_id, name, description, parsed)
        return workflow_id, version, created

    def _check_runnable(self, spec: WorkflowSpec) -> None:
        """What would make a node fail for a reason known now is refused now."""
        for step in spec.steps:
            if (step.kind == "training" and not step.config_object.get("command")
                    and not self.training_command):
                raise InvalidArgument(nodes.training_command_missing(step.id))

    async def _check_payloads(self, workflow_id: str, spec: WorkflowSpec) -> None:
        """A typed node's task payload that its class is known to refuse (a signature node in
        a class without a handler, say) is refused now, naming the node, not at run time."""
        if self.payload_check is None:
            return
        for step in spec.steps:
            if step.kind == "task" or not step.runs_task:
                continue
            if step.kind == "training" and not (step.config_object.get("command")
                                                or self.training_command):
                continue
            sample = nodes.payload(step, workflow_id=workflow_id, run_id="run-check",
                                   run_input={}, workflow_context={},
                                   training_command=self.training_command)
            try:
                await self.payload_check(step.task_class, sample)
            except InvalidArgument as exc:
                raise InvalidArgument(f"node '{step.id}' ({step.kind}): {exc}") from None

    async def get(self, workflow_id: str, version: int | None = None) -> Workflow:
        return await repository.get_workflow(self._store, workflow_id, version)

    async def history(self, workflow_id: str) -> list[Workflow]:
        return await repository.workflow_history(self._store, workflow_id)

    async def created_times(self, workflow_ids: list[str]) -> dict[str, float]:
        return await repository.created_times(self._store, workflow_ids)

    async def get_run(self, run_id: str) -> Run:
        return await repository.get_run(self._store, run_id)

    async def runs(self, workflow_id: str, limit: int) -> list[Run]:
        return await repository.list_runs(self._store, workflow_id, limit)

    async def step_tasks(self, run: Run) -> dict[str, Task]:
        """The tasks of the run's steps that have one, by step id."""
        by_task = {step.task_id: step_id for step_id, step in run.steps.items() if step.task_id}
        tasks = await self._scheduler.get_many(list(by_task))
        return {by_task[task.id]: task for task in tasks}

    async def list(self) -> list[Workflow]:
        return await repository.list_workflows(self._store)

    async def start_run(self, workflow_id: str, idempotency_key: str,
                        run_input: dict[str, str], *, original_input: object = None,
                        metadata: dict[str, object] | None = None) -> tuple[Run, bool]:
        run, created = await repository.start_run(self._store, workflow_id, idempotency_key,
                                               run_input, original_input=original_input,
                                               metadata=metadata)
        if created:
            try:
                await self._advance(run.run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The run was stored: the caller gets it (failed, with why), never UNKNOWN.
                await self._abandon(run.run_id, exc)
        return run, created

    async def watch(self, run_id: str) -> AsyncIterator[Run]:
        """The run's current state, then each change, until it is completed or failed."""
        changes: asyncio.Queue[Run] = asyncio.Queue()
        self._watchers[run_id].add(changes)
        try:
            run = await repository.get_run(self._store, run_id)
            last = _view(run)
            yield run
            while not run.status.terminal:
                run = await changes.get()
                if _view(run) != last:
                    last = _view(run)
                    yield run
        finally:
            self._watchers[run_id].discard(changes)
            if not self._watchers[run_id]:
                del self._watchers[run_id]

    def _on_task(self, task: Task) -> None:
        if task.run_id and task.status.terminal:
            job = asyncio.get_running_loop().create_task(self._step_done_contained(task))
            self._pending.add(job)
            job.add_done_callback(self._pending.discard)

    async def _step_done_contained(self, task: Task) -> None:
        try:
            await self._step_done(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._abandon(task.run_id, exc)

    async def _step_done(self, task: Task) -> None:
        status = StepStatus.COMPLETED if task.status is TaskState.COMPLETED else StepStatus.FAILED
        error = task.error if task.status is not TaskState.CANCELLED else "task cancelled"
        if status == StepStatus.COMPLETED:
            run = await repository.get_run(self._store, task.run_id)
            workflow = await repository.get_workflow(self._store, run.workflow_id, run.version)
            step_error = nodes.outcome_error(workflow.spec.step(task.step_id), task.result)
            if step_error:
                status, error = StepStatus.FAILED, step_error
        await repository.update_step(self._store, task.run_id, task.step_id, status,
                                  task_id=task.id, result=task.result, error=error)
        await self._advance(task.run_id)

    async def _advance(self, run_id: str) -> None:
        async with self._locks[run_id]:
            while True:
                actions = await repository.advance_run(self._store, run_id)
                run = await repository.get_run(self._store, run_id)
                again = False
                if actions.ready:
                    workflow = await repository.get_workflow(self._store, run.workflow_id,
                                                          run.version)
                    for step_id in actions.ready:
                        step = workflow.spec.step(step_id)
                        if not step.runs_task:
                            # Done at once: its children may be ready now.
                            again |= await self._complete_inline(run, step)
                        else:
                            again |= not await self._submit(run, workflow, step_id)
                    run = await repository.get_run(self._store, run_id)
                self._publish(run)
                if not again:
                    break
        if run.status.terminal:
            self._locks.pop(run_id, None)

    async def _complete_inline(self, run: Run, step: StepSpec) -> bool:
        result = nodes.inline_result(step)
        event = nodes.INLINE_EVENTS.get(step.kind, "")
        data = {"node_type": step.kind, "config": step.config}
        return await repository.complete_inline_step(self._store, run.run_id, step.id, result,
                                                     event, data)

    def _payload(self, run: Run, workflow: Workflow, step: StepSpec) -> dict[str, str]:
        if step.kind == "task":
            return step.render_payload(run.render_context())
        parents = {parent: (run.steps[parent].status.value, run.steps[parent].result)
                   for parent in step.depends_on}
        context = nodes.context(run.workflow_id, workflow.name, run.run_id, step, parents)
        run_input = run.original_input if run.original_input is not None else run.input
        return nodes.payload(step, workflow_id=run.workflow_id, run_id=run.run_id,
                             run_input=run_input, workflow_context=context,
                             training_command=self.training_command)

    async def _submit(self, run: Run, workflow: Workflow, step_id: str) -> bool:
        """Submit one ready step's task; False when it could not be (the step then failed)."""
        step = workflow.spec.step(step_id)
        task_id = nodes.task_id(run.run_id, step)
        try:
            payload = self._payload(run, workflow, step)
            await self._scheduler.submit(TaskRequest(
                id=task_id, task_class=step.task_class, payload=payload, priority=step.priority,
                workflow_id=run.workflow_id, timeout_seconds=step.timeout_seconds,
                max_attempts=step.max_attempts), run_id=run.run_id, step_id=step_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Any error (a bad template, a bug) fails this step only, with the reason.
            log.warning("step_not_submitted", run_id=run.run_id, step=step_id, error=str(exc),
                        exc_info=not isinstance(exc, DomainError))
            await repository.update_step(self._store, run.run_id, step_id, StepStatus.FAILED,
                                      task_id=task_id,
                                      error=str(exc) or type(exc).__name__)
            return False
        await repository.update_step(self._store, run.run_id, step_id, StepStatus.RUNNING,
                                  task_id=task_id)
        return True

    def _publish(self, run: Run) -> None:
        for queue in self._watchers.get(run.run_id, ()):
            queue.put_nowait(run)


def _view(run: Run) -> tuple[str, int, str, str]:
    return (run.status.value, run.steps_completed, run.current_step, run.error)
