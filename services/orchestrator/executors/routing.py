"""Which executor runs which class: env-manager for most, Slurm for gpu_slurm when configured."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from agent_infra.runtime.logs import get_logger

from ..model import DEFAULT_CLASS
from ..settings import OrchestratorSettings, SlurmSettings
from .env_manager import EnvManagerExecutor
from .protocol import Execution, ExecutionOutcome, Executor
from .slurm.executor import SlurmExecutor
from .slurm.payload import SLURM_CLASS

log = get_logger("executors")

NO_SLURM = (f"{SLURM_CLASS} needs a Slurm executor and none is configured "
            "(set [slurm] enabled = true)")


class RoutingExecutor:
    """Sends each class to the executor that owns it (`routes`), every other class to `default`.

    Each answer (supports, availability, execution) comes from the owner alone, so an unreachable
    Slurm controller holds back gpu_slurm only, and a down env-manager never holds gpu_slurm.
    """

    def __init__(self, routes: Mapping[str, Executor], default: Executor) -> None:
        self._routes = dict(routes)
        self._default = default
        self._all: list[Executor] = [default]
        for executor in self._routes.values():
            if all(executor is not known for known in self._all):
                self._all.append(executor)

    def owner(self, task_class: str) -> Executor:
        return self._routes.get(task_class, self._default)

    def supports(self, task_class: str) -> str:
        return self.owner(task_class).supports(task_class)

    async def check_payload(self, task_class: str, payload: Mapping[str, str]) -> None:
        check = getattr(self.owner(task_class), "check_payload", None)
        if check is not None:
            await check(task_class, payload)

    async def execute(self, execution: Execution) -> ExecutionOutcome:
        return await self.owner(execution.task_class).execute(execution)

    async def cancel(self, execution_id: str, task_class: str) -> None:
        await self.owner(task_class).cancel(execution_id, task_class)

    def endpoints(self, execution_id: str, task_class: str) -> list[str]:
        """The owner's `endpoints` (EnvManagerExecutor's), [] when it keeps none."""
        where = getattr(self.owner(task_class), "endpoints", None)
        return list(where(execution_id, task_class)) if where is not None else []

    async def wait_until_available(self, task_class: str) -> None:
        await self.owner(task_class).wait_until_available(task_class)

    async def health(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for states in await asyncio.gather(*(e.health() for e in self._all)):
            merged.update(states)
        return merged

    async def close(self) -> None:
        # Each is closed even when another's close fails; the first failure is raised after.
        results = await asyncio.gather(*(e.close() for e in self._all), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def build_executor(settings: OrchestratorSettings) -> Executor:
    """The daemon's executor from its settings."""
    if not settings.slurm.enabled:
        return EnvManagerExecutor(settings.env_managers, settings.dispatch.availability_check,
                                  {SLURM_CLASS: NO_SLURM})
    env_manager = EnvManagerExecutor(settings.env_managers, settings.dispatch.availability_check,
                                     {SLURM_CLASS: "gpu_slurm runs on Slurm, not env-manager"})
    return RoutingExecutor({SLURM_CLASS: SlurmExecutor(settings.slurm, slurm_work_dir(settings))},
                           env_manager)


def slurm_work_dir(settings: OrchestratorSettings) -> Path:
    return settings.slurm.work_dir or settings.store.data_dir / "slurm"


def slurm_executor(executor: Executor) -> SlurmExecutor | None:
    """The Slurm executor among the daemon's executors, if it has one."""
    if isinstance(executor, RoutingExecutor):
        executor = executor.owner(SLURM_CLASS)
    return executor if isinstance(executor, SlurmExecutor) else None


def env_manager_executor(executor: Executor) -> EnvManagerExecutor | None:
    """The env-manager executor among the daemon's executors, if it has one."""
    if isinstance(executor, RoutingExecutor):
        executor = executor.owner(DEFAULT_CLASS)
    return executor if isinstance(executor, EnvManagerExecutor) else None


def reload_slurm(executor: Executor, running: OrchestratorSettings,
                 new: OrchestratorSettings) -> SlurmSettings:
    """Apply new [slurm] settings to the running Slurm executor; the [slurm] settings now in
    effect.

    New submissions take them (partition, sbatch_args, ...) and the jobs in flight carry on,
    polled under them. Turning Slurm on or off, and moving its work dir (the jobs in flight keep
    their files there), need a restart: refused with a warning, the running values kept.
    """
    old, wanted = running.slurm, new.slurm
    slurm = slurm_executor(executor)
    if wanted.enabled != old.enabled:
        log.warning("slurm_reload_refused", needs_restart=["slurm.enabled"],
                    reason=f"turning Slurm {'on' if wanted.enabled else 'off'} needs a restart; "
                           "the running [slurm] settings are kept")
        return old
    if slurm is None:
        return wanted  # no Slurm executor running: nothing to apply
    if slurm_work_dir(new) != slurm_work_dir(running):
        log.warning("slurm_reload_partial", needs_restart=["slurm.work_dir"],
                    kept=str(slurm_work_dir(running)))
        wanted = wanted.model_copy(update={"work_dir": old.work_dir})
    changed = sorted(key for key in SlurmSettings.model_fields
                     if getattr(wanted, key) != getattr(slurm.settings, key))
    if changed:
        slurm.reconfigure(wanted)
        log.info("slurm_reconfigured", changed=changed)
    return wanted

