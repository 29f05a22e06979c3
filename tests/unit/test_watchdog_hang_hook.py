"""The test-only event-loop hang (AGENT_INFRA_TEST_HANG_FILE) fires only for its own pid."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from agent_infra.runtime import notify

HANGS = textwrap.dedent("""
    import os, sys
    from agent_infra.runtime import notify
    open(sys.argv[1], "w").write(str(os.getpid()))
    notify._test_hang(sys.argv[1])
""")


def test_other_pid_or_missing_file_does_not_hang(tmp_path: Path) -> None:
    notify._test_hang(str(tmp_path / "missing"))
    other = tmp_path / "other"
    other.write_text(str(os.getpid() + 1))
    notify._test_hang(str(other))


def test_own_pid_hangs(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HANGS, str(tmp_path / "hang")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        assert proc.returncode is None, "the hook returned instead of blocking"
    finally:
        proc.kill()
        proc.wait()


def test_no_unit_or_example_sets_the_hook() -> None:
    repo = Path(__file__).resolve().parents[2]
    for path in [*(repo / "deploy").rglob("*"), *(repo / "examples").rglob("*")]:
        if path.is_file():
            assert notify.TEST_HANG_ENV not in path.read_text(errors="replace"), path
