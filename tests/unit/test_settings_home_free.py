"""Settings defaults never touch the home directory unless they are used (issue 12).

Under systemd `DynamicUser=yes` there is no HOME and no passwd entry for the uid, so
`Path.home()` raises. The units set ORCHESTRATOR_DATA_DIR / ENV_MANAGER_STATE_DIR; importing the
settings and loading them with those set must then work without any home directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import argparse, pwd

    def no_entry(*args, **kwargs):
        raise KeyError("getpwuid(): uid not found")

    pwd.getpwuid = no_entry  # what a dynamic uid without NSS looks like
    from agent_infra.env_manager import settings as env_settings
    from agent_infra.orchestrator import settings as orch_settings
    from agent_infra.runtime.config import ConfigSpec, load_config

    def spec(module):
        return next(v for v in vars(module).values() if isinstance(v, ConfigSpec))

    args = argparse.Namespace(config=None)
    orch = load_config(spec(orch_settings), args, {"ORCHESTRATOR_DATA_DIR": "/srv/o"}).settings
    env = load_config(spec(env_settings), args, {"ENV_MANAGER_STATE_DIR": "/srv/e"}).settings
    print(orch.store.data_dir, env.state.dir)
""")


def test_no_home_needed_when_the_dirs_are_configured() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "HOME"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=environ, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/srv/o", "/srv/e"]
