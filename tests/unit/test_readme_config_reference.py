"""The README's configuration reference names every variable and flag the daemons accept."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_infra.env_manager.settings import SPEC as ENV_MANAGER
from agent_infra.orchestrator.settings import SPEC as ORCHESTRATOR
from agent_infra.runtime import ConfigSpec

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("spec", [ENV_MANAGER, ORCHESTRATOR], ids=lambda s: s.daemon)
def test_every_option_is_documented(spec: ConfigSpec) -> None:
    missing = [name for option in spec.options for name in (option.env, option.flag, option.key)
               if name and f"`{name}" not in README]
    assert f"`{spec.config_env}`" in README
    assert not missing, f"README.md does not document: {missing}"
