"""A wheelhouse of agent-infra's dependencies, for installs with no index (offline hosts, images).

    .venv/bin/python scripts/wheelhouse.py [--root DIR]

Prints the path of a directory holding a wheel of every runtime dependency of this checkout's
pyproject.toml (and theirs) plus the build backend's (so an sdist builds offline too), with
`requirements.txt` listing the runtime dependencies. Install from it with no index:

    pip install --no-index --find-links DIR agent_infra-*.whl            # the wheel
    pip install --no-index --find-links DIR agent_infra-*.tar.gz         # the sdist
    pip install --no-index --find-links DIR -r DIR/requirements.txt      # dependencies only

Wheels are built by this interpreter (binary wheels are tagged for its Python version and
platform), from PyPI, only when the directory for this dependency list and interpreter is not
there yet: its name is a hash of both, under .state/wheelhouse/ by default. scripts/build_image.sh
and tests/integration/test_packaging.py share it. Safe to run concurrently (a lock; the directory
appears complete or not at all).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / ".state" / "wheelhouse"
KEEP = 3  # wheelhouses kept per root (the newest), for branches with other dependencies


def requirements(pyproject: Path) -> tuple[list[str], list[str]]:
    """(runtime dependencies, build-system requires) as pyproject.toml lists them."""
    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["dependencies"]), list(data["build-system"]["requires"])


def wheelhouse_name(runtime: list[str], build: list[str]) -> str:
    tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    text = "\n".join([tag, *runtime, "--", *build])
    return f"deps-{sys.implementation.cache_tag}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def build(target: Path, runtime: list[str], build_requires: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        reqs = tmp / "requirements.txt"
        reqs.write_text("".join(f"{req}\n" for req in runtime))
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp),
                        "-r", str(reqs), *build_requires],
                       check=True, env=env, stdin=subprocess.DEVNULL)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune(root: Path, keep: Path) -> None:
    houses = sorted((p for p in root.glob("deps-*") if p.is_dir() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in houses[KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def ensure(root: Path = DEFAULT_ROOT, pyproject: Path = REPO / "pyproject.toml") -> Path:
    """The wheelhouse for `pyproject`'s dependencies and this interpreter, built if missing."""
    runtime, build_requires = requirements(pyproject)
    root.mkdir(parents=True, exist_ok=True)
    target = root / wheelhouse_name(runtime, build_requires)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            print(f"==> pip wheel {len(runtime)} dependencies -> {target}", file=sys.stderr)
            prune(root, target)
            build(target, runtime, build_requires)
        os.utime(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="where wheelhouses are kept (default: .state/wheelhouse)")
    args = parser.parse_args()
    try:
        print(ensure(args.root.resolve()))
    except subprocess.CalledProcessError as exc:
        print(f"wheelhouse: error: pip wheel exited {exc.returncode} "
              f"(is PyPI reachable from this host?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
