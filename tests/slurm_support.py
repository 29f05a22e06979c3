"""Helpers for tests that need a real single-node Slurm cluster (scripts/slurm_cluster.sh).

A cluster that cannot be started is a test *failure*, not a skip: CI must not go green without
running the Slurm tests. Set AGENT_INFRA_NO_SLURM=1 to skip them explicitly instead. The script
installs Debian's slurmctld/slurmd/slurm-client/munge on demand (needs root) and is quick once
they are there.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

SLURM_OPT_OUT_ENV = "AGENT_INFRA_NO_SLURM"
REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
CTLD_PID_FILE = Path("/run/slurm/slurmctld.pid")
# Installing the packages on a fresh machine (apt-get update included) takes well under this.
START_TIMEOUT_S = 600.0


def slurm_opted_out() -> bool:
    return os.environ.get(SLURM_OPT_OUT_ENV, "") == "1"


def _give_up(reason: str) -> NoReturn:
    if slurm_opted_out():
        pytest.skip(f"{reason}; skipped because {SLURM_OPT_OUT_ENV}=1")
    pytest.fail(f"{reason}: fix that, or set {SLURM_OPT_OUT_ENV}=1 to skip Slurm tests "
                "explicitly", pytrace=False)


def start_cluster() -> float:
    """Start (or confirm) the cluster; the seconds it took. Fails or skips the test if it can't."""
    if slurm_opted_out():
        pytest.skip(f"Slurm tests skipped because {SLURM_OPT_OUT_ENV}=1")
    if os.geteuid() != 0:
        _give_up("a Slurm test cluster needs root (scripts/slurm_cluster.sh installs packages "
                 "and starts daemons)")
    started = time.monotonic()
    try:
        done = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        _give_up(f"{CLUSTER_SCRIPT} start did not finish within {START_TIMEOUT_S:g} s")
    if done.returncode != 0:
        _give_up(f"{CLUSTER_SCRIPT} start failed (exit {done.returncode}):\n"
                 f"{done.stderr[-3000:]}")
    return time.monotonic() - started


def stop_controller() -> None:
    """Kill slurmctld (SIGTERM, as an outage would look to clients), and wait until it is gone."""
    pid = int(CTLD_PID_FILE.read_text().strip())
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "slurmctld did not stop"


def slurm(*argv: str) -> str:
    """A Slurm client command's stdout (argument list, no shell)."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=True,
                          timeout=60, stdin=subprocess.DEVNULL).stdout


def jobs_named(name: str) -> list[str]:
    """Every job the controller remembers with this name, in any state."""
    out = slurm("squeue", "--noheader", "--all", "--states=all", f"--name={name}",
                "--format=%i")
    return [line.strip() for line in out.splitlines() if line.strip()]
