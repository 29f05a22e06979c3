"""One shared `AgentInfra` per event loop, for code that should not pass one around.

    from agent_infra.client import ensure_infra, ensure_infra_sync, shutdown_infra, use_infra

    infra = await ensure_infra()              # connected once per event loop, then reused
    async with use_infra() as infra: ...      # the same instance; left open on exit
    await shutdown_infra()                    # close it, stop daemons it auto-started

    print(ensure_infra_sync())                # from plain synchronous code: the health dict

A gRPC channel belongs to the event loop it was made in, so "shared" means one instance per
running loop: a second ``asyncio.run`` gets a fresh instance instead of one whose channel is
bound to a closed loop. The keyword arguments are those of `AgentInfra.start`; they count when
the instance is made (the first call in a loop) and are ignored after that.

Daemons a shared instance auto-started belong to the process, not to a loop: they keep running
across loops (so `ensure_infra_sync` can be called again and again) until `shutdown_infra`, or
interpreter exit, stops them with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._launcher import LocalDaemon
from .infra import AgentInfra

__all__ = ["ensure_infra", "ensure_infra_sync", "shutdown_infra", "use_infra"]


@dataclass
class _Slot:
    infra: AgentInfra | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_slots: dict[asyncio.AbstractEventLoop, _Slot] = {}
_daemons: list[LocalDaemon] = []  # auto-started by any shared instance
_guard = threading.Lock()  # ensure_infra_sync may run loops on other threads


def _slot(loop: asyncio.AbstractEventLoop) -> _Slot:
    with _guard:
        for old in [old for old in _slots if old.is_closed()]:
            # Its channels died with the loop; nothing can be awaited on it any more.
            del _slots[old]
        slot = _slots.get(loop)
        if slot is None:
            slot = _slots[loop] = _Slot()
        return slot


def _with_original(auto_start_services: bool | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The original's positional `auto_start_services` folded into the keyword arguments."""
    if auto_start_services is not None:
        kwargs = {**kwargs, "auto_start_services": auto_start_services}
    return kwargs


async def ensure_infra(auto_start_services: bool | None = None, /, **kwargs: Any) -> AgentInfra:
    """The shared AgentInfra of the running event loop, made and connected on first use.

    Keyword arguments as for `AgentInfra.start` (addresses, config, auto_start, ...), including
    the original's (``ensure_infra(auto_start_services, *, orchestrator_addr, workspace,
    cli_path)``). Raises InfraUnavailable when the orchestrator cannot be reached (and could
    not be auto-started).
    """
    kwargs = _with_original(auto_start_services, kwargs)
    slot = _slot(asyncio.get_running_loop())
    if slot.infra is not None:
        return slot.infra
    async with slot.lock:
        if slot.infra is None:
            infra = await AgentInfra.start(**kwargs)
            with _guard:
                _daemons.extend(infra._take_started())
            slot.infra = infra
    return slot.infra


@contextlib.asynccontextmanager
async def use_infra(auto_start_services: bool | None = None, /,
                    **kwargs: Any) -> AsyncIterator[AgentInfra]:
    """``async with use_infra() as infra:`` the shared instance (see `ensure_infra`; the same
    arguments).

    It stays open after the block, for the next user; `shutdown_infra` closes it.
    """
    yield await ensure_infra(auto_start_services, **kwargs)


async def shutdown_infra() -> None:
    """Close this loop's shared instance and stop (SIGTERM) every daemon a shared instance
    auto-started. Safe to call when there is nothing to shut down."""
    loop = asyncio.get_running_loop()
    with _guard:
        slot = _slots.pop(loop, None)
        daemons = list(_daemons)
        _daemons.clear()
    if slot is not None and slot.infra is not None:
        await slot.infra.close()
    for daemon in sorted(daemons, key=lambda d: d.name != "orchestrator"):
        await daemon.stop()


async def _close_loop_instance() -> None:
    """Close this loop's shared instance (its daemons stay with the process)."""
    with _guard:
        slot = _slots.pop(asyncio.get_running_loop(), None)
    if slot is not None and slot.infra is not None:
        await slot.infra.close()


async def _health_once(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        infra = await ensure_infra(**kwargs)
        return await infra.health_check()
    finally:
        await _close_loop_instance()


def ensure_infra_sync(auto_start_services: bool | None = None, /,
                      **kwargs: Any) -> dict[str, Any]:
    """From synchronous code: make sure the infrastructure answers; its health dict.

    Arguments as for `ensure_infra`. (The original returned its AgentInfra, whose connection
    belonged to an event loop that had already ended; the health dict is what it was good for.)

    Each call runs a short event loop of its own (``asyncio.run``), connects, checks health
    and closes its connection again, so it works any number of times and never leaves a
    channel bound to a closed loop. Called while an event loop runs in this thread (a
    notebook), it runs on a helper thread instead, blocking until done. Daemons auto-started
    (``auto_start=True``) keep running for the next call; `shutdown_infra` or interpreter exit
    stops them. Raises InfraUnavailable when the orchestrator cannot be reached.
    """
    kwargs = _with_original(auto_start_services, kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_health_once(kwargs))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ensure_infra_sync") as pool:
        return pool.submit(asyncio.run, _health_once(kwargs)).result()
