"""`orchestrator` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent_infra.runtime import DaemonSettings, run_daemon

from .app import OrchestratorApp
from .settings import SPEC, OrchestratorSettings


def _make_app(settings: DaemonSettings) -> OrchestratorApp:
    assert isinstance(settings, OrchestratorSettings)
    return OrchestratorApp(settings)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_daemon(SPEC, _make_app, argv))
