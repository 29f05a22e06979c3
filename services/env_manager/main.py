"""`env-manager` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent_infra.runtime import DaemonSettings, run_daemon

from .app import EnvManagerApp
from .settings import SPEC, EnvManagerSettings


def _make_app(settings: DaemonSettings) -> EnvManagerApp:
    assert isinstance(settings, EnvManagerSettings)
    return EnvManagerApp(settings)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_daemon(SPEC, _make_app, argv))
