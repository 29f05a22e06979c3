"""Images the deployment tests run in, built ahead while other tests run.

conftest.py starts `python -m tests.deploy_images daemon systemd` in the background once it sees
such tests selected, so their builds (a debootstrap each: minutes on a fresh machine) overlap
the tests before them instead of adding to the suite's time. Every build is cached by content
and serialized by a file lock: a test that needs an image just builds it, which waits for the
build in progress and then finds the image.

  daemon   agent-infra:local and its base local/debian-python:bookworm (scripts/build_image.sh;
           test_compose, the Debian sandbox tests)
  systemd  the image systemd runs in as PID 1 (test_systemd_deploy)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".state"
BUILD_IMAGE_SCRIPT = REPO / "scripts" / "build_image.sh"
SUITE = "bookworm"
# procps: /bin/kill for ExecReload=.
INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-venv,procps"
RECIPE = {"suite": SUITE, "variant": "minbase", "include": INCLUDE, "recipe": 1}
IMAGE_LABEL = "org.agent-infra.systemd-image"
KINDS = ("daemon", "systemd")


class BuildError(Exception):
    pass


def _run(*args: str, timeout: float = 300, stdin: int | IO[bytes] | None = None
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=stdin)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def host_debian_mirror() -> str:
    """The Debian mirror apt on this host uses for the suite (never a name from the repo)."""
    candidates: list[tuple[str, list[str]]] = []
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    candidates.append((parts[1], [parts[2]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    candidates.append((uri, fields.get("Suites", "").split()))
    for uri, suites in candidates:
        if SUITE in suites and "security" not in uri:
            return uri
    raise BuildError(f"no Debian {SUITE} mirror in /etc/apt/sources.list(.d): cannot debootstrap")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    STATE.mkdir(exist_ok=True)
    with (STATE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def systemd_image() -> str:
    """The systemd image's tag or id: debootstrapped once per recipe, `docker import`ed with the
    recipe's hash as a label."""
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    tag = f"local/agent-infra-systemd:{digest}"
    with _locked("systemd_image"):
        found = _run("docker", "images", "-q", "--filter", f"label={IMAGE_LABEL}={digest}").stdout
        if found.strip():
            return found.split()[0]
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise BuildError("debootstrap missing: run scripts/bootstrap.sh")
        with tempfile.TemporaryDirectory(dir=STATE, prefix="systemd-root-") as tmp:
            root = Path(tmp) / "root"
            _run(debootstrap, f"--variant={RECIPE['variant']}", f"--include={INCLUDE}", SUITE,
                 str(root), host_debian_mirror(), timeout=1800)
            tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            _run("docker", "import", "-c", 'CMD ["/sbin/init"]', "-c",
                 f"LABEL {IMAGE_LABEL}={digest}", "-", tag, stdin=tar.stdout, timeout=600)
            if tar.wait() != 0:
                raise BuildError("tar of the debootstrapped root failed")
        return tag


def daemon_image() -> None:
    """scripts/build_image.sh (its own lock and content cache)."""
    _run("bash", str(BUILD_IMAGE_SCRIPT), timeout=1800, stdin=subprocess.DEVNULL)


def main(kinds: list[str]) -> int:
    # A SIGTERM (the test session ending first) unwinds normally: temporary roots are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        print(f"unknown image kind(s) {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    failed = 0
    for kind in kinds:
        try:
            daemon_image() if kind == "daemon" else systemd_image()
            print(f"{kind}: ready", flush=True)
        except (BuildError, subprocess.TimeoutExpired) as exc:
            print(f"{kind}: failed: {exc}", file=sys.stderr, flush=True)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
