"""`env-manager` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent_infra.runtime import run_daemon

from .app import EnvManagerApp
from .settings import SPEC


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_daemon(SPEC, EnvManagerApp, argv))
