"""agent_infra: the env-manager and orchestrator daemons, their shared runtime, and the client.

This folder is installed as the ``agent_infra`` package (pyproject maps it, and ``client/`` as
``agent_infra.client``), so the project owns one import name. The client's public API is
re-exported here on first use (``from agent_infra import AgentInfra``): a daemon importing
``agent_infra.runtime`` never loads the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_infra.client import *  # noqa: F403


def __getattr__(name: str) -> Any:
    client = importlib.import_module("agent_infra.client")
    if name not in client.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(client, name)


def __dir__() -> list[str]:
    return sorted(importlib.import_module("agent_infra.client").__all__)
