"""deploy/systemd, scripts/deploy_production.sh and verify_infrastructure.sh under a REAL systemd.

systemd 252 runs as PID 1 in a container (see MACHINE-NOTES: a debootstrapped Debian image,
built once and cached by a hash of its recipe, `docker import`ed with that hash as a label). The
project is installed inside with `deploy_production.sh --wheelhouse` from wheels built on the
host (the dependencies cached under .state/). The container has its own network namespace; the
daemons are reached with `docker exec` (the CLI and the venv's python inside), and env-manager
inside drives the host's engine through the mounted /var/run/docker.sock, running tasks in
local/busybox:latest (scripts/bootstrap.sh builds it).

The checks share one container and run in file order (each leaves the stack running).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_images import REPO, STATE, BuildError, systemd_image

TASK_IMAGE = "local/busybox:latest"
SERVICES = ("env-manager", "orchestrator")
TIMEOUT_STOP = 30.0  # TimeoutStopSec= in both units

pytestmark = pytest.mark.timeout(900)


def run(*args: str, check: bool = True, timeout: float = 300,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# ------------------------------------------------------------------------------------------------
# Wheels built on the host
# ------------------------------------------------------------------------------------------------
def wheelhouse(target: Path) -> Path:
    """agent-infra's wheel (built now) plus its dependencies (cached by pyproject.toml)."""
    target.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        str(REPO), "-w", str(target))
    project = next(target.glob("agent_infra-*.whl"))
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    deps = STATE / "systemd-wheelhouse" / key
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        # For the container's Python (Debian 12: CPython 3.11, glibc 2.36), from the host's index.
        run(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(deps),
            str(project), timeout=900)
        (deps / ".complete").write_text("")
    for wheel in deps.glob("*.whl"):
        if not wheel.name.startswith("agent_infra-"):
            shutil.copy2(wheel, target)
    return target


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------
class Box:
    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("docker", "exec", "-i", self.name, "sh", "-c", script, check=check,
                   timeout=timeout, input=input)

    def prop(self, unit: str, name: str) -> str:
        return self.sh(f"systemctl show -p {name} --value {unit}").stdout.strip()

    def pid(self, unit: str) -> int:
        return int(self.prop(unit, "MainPID") or 0)

    def state(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit}", check=False).stdout.strip()

    def wait_for(self, what: str, predicate, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
        began = time.monotonic()
        while not predicate():
            assert time.monotonic() - began < timeout, f"timed out after {timeout}s: {what}"
            time.sleep(0.2)
        return time.monotonic() - began

    def healthy(self, port: int) -> bool:
        code = ("import sys,urllib.request\n"
                f"try: sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/health',"
                "timeout=2).status == 200 else 1)\nexcept Exception: sys.exit(1)")
        return self.sh(f"/opt/agent-infra/.venv/bin/python -c \"{code}\"", check=False
                       ).returncode == 0

    def cli(self, args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return self.sh(f"/opt/agent-infra/.venv/bin/agent-infra {args}", check=check,
                       timeout=timeout)

    def submit(self, command: str) -> str:
        task_id = f"sd-{uuid.uuid4().hex[:10]}"
        self.cli(f"submit --class cpu_short --id {task_id} -- sh -c '{command}'")
        return task_id

    def wait_task(self, task_id: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.cli(f"wait --wait-timeout {timeout} {task_id}", check=False,
                        timeout=timeout + 30)

    def journal(self, unit: str, since: str = "") -> str:
        extra = f" --since '{since}'" if since else ""
        return self.sh(f"journalctl _SYSTEMD_UNIT={unit}.service -o cat --no-pager{extra}").stdout


ENV_MANAGER_TOML = f"""
[workload_classes.cpu_short]
image = "{TASK_IMAGE}"
"""
ORCHESTRATOR_TOML = """
[log]
level = "{level}"
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    if run("docker", "image", "inspect", TASK_IMAGE, check=False).returncode != 0:
        pytest.fail(f"{TASK_IMAGE} missing on the host engine: run scripts/bootstrap.sh")
    try:
        image = systemd_image()
    except BuildError as exc:
        pytest.fail(f"the systemd image: {exc}")
    wheels = wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    name = f"agent-infra-systemd-test-{uuid.uuid4().hex[:8]}"
    run("docker", "run", "-d", "--name", name, "--cap-add", "SYS_ADMIN",
        "--security-opt", "seccomp=unconfined", "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "--tmpfs", "/tmp", "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "--label", "org.agent-infra.test=systemd", image, "/sbin/init")
    try:
        b = Box(name)
        b.wait_for("systemd running", lambda: b.sh("systemctl is-system-running", check=False)
                   .stdout.strip() in ("running", "degraded"), timeout=60)
        b.sh("mkdir -p /root/src /root/wheelhouse /etc/agent-infra")
        tar = subprocess.Popen(["tar", "-C", str(REPO), "-c", "scripts", "deploy", "examples"],
                               stdout=subprocess.PIPE)
        subprocess.run(["docker", "exec", "-i", name, "tar", "-C", "/root/src", "-x"],
                       stdin=tar.stdout, check=True, timeout=120)
        assert tar.wait() == 0
        run("docker", "cp", f"{wheels}/.", f"{name}:/root/wheelhouse/")
        # The operator's own config, written before the install: deploy must keep it.
        b.sh("cat >/etc/agent-infra/env-manager.toml", input=ENV_MANAGER_TOML)
        b.sh("cat >/etc/agent-infra/orchestrator.toml",
             input=ORCHESTRATOR_TOML.format(level="info"))
        conf = "/etc/agent-infra"
        b.sh(f"chmod 0644 {conf}/*.toml && printf '%s\\n' "
             f"ENV_MANAGER_CONFIG={conf}/env-manager.toml >{conf}/env-manager.env"
             f" && printf '%s\\n' ORCHESTRATOR_CONFIG={conf}/orchestrator.toml "
             f">{conf}/orchestrator.env")
        began = time.monotonic()
        deploy = b.sh("/root/src/scripts/deploy_production.sh --wheelhouse /root/wheelhouse",
                      timeout=300)
        print(f"\ndeploy_production.sh: {time.monotonic() - began:.1f}s\n{deploy.stderr}")
        yield b
    finally:
        logs = run("docker", "exec", name, "journalctl", "--no-pager", "-n", "60", "-u",
                   "env-manager", "-u", "orchestrator", check=False, timeout=60)
        print(f"\n--- journal tail ---\n{logs.stdout[-6000:]}")
        run("docker", "rm", "-f", "-v", name, check=False, timeout=120)


# ------------------------------------------------------------------------------------------------
# Checks (file order)
# ------------------------------------------------------------------------------------------------
def test_install_runs_both_and_is_idempotent(box: Box) -> None:
    for service in SERVICES:
        assert box.prop(f"{service}.service", "SubState") == "running"
    assert box.sh("systemctl is-enabled dspy-agent.target").stdout.strip() == "enabled"
    assert "ENV_MANAGER_CONFIG" in box.sh("cat /etc/agent-infra/env-manager.env").stdout
    again = box.sh("/root/src/scripts/deploy_production.sh --wheelhouse /root/wheelhouse")
    assert "nothing to change" in again.stderr, again.stderr
    assert "install" not in again.stderr.replace("installed", "")


def test_target_start_waits_for_ready(box: Box) -> None:
    box.sh("systemctl stop dspy-agent.target env-manager orchestrator", timeout=60)
    assert {box.state(f"{s}.service") for s in SERVICES} == {"inactive"}
    began = time.monotonic()
    box.sh("systemctl start dspy-agent.target", timeout=120)
    took = time.monotonic() - began
    # Returned only after READY=1 of both: active (running) and the ports answer right away.
    for service in SERVICES:
        assert box.prop(f"{service}.service", "SubState") == "running"
        start = int(box.prop(f"{service}.service", "ExecMainStartTimestampMonotonic"))
        active = int(box.prop(f"{service}.service", "ActiveEnterTimestampMonotonic"))
        print(f"{service}: READY {(active - start) / 1e6:.2f}s after exec")
        assert "serving" in box.prop(f"{service}.service", "StatusText")
    assert box.healthy(50101) and box.healthy(9097)
    print(f"systemctl start dspy-agent.target: {took:.2f}s")
    # While not READY the unit is `activating`, never `active`.
    box.sh("systemctl restart --no-block orchestrator")
    seen: set[str] = set()

    def became_active() -> bool:
        seen.add(box.state("orchestrator"))
        return "active" in seen

    box.wait_for("orchestrator active", became_active, timeout=60)
    assert "activating" in seen, seen
    assert box.healthy(9097)


def test_verify_infrastructure_passes(box: Box) -> None:
    text = box.sh("/root/src/scripts/verify_infrastructure.sh", check=False, timeout=180)
    print(text.stdout)
    assert text.returncode == 0, text.stdout + text.stderr
    report = json.loads(box.sh("/root/src/scripts/verify_infrastructure.sh --json --no-task",
                               timeout=120).stdout)
    assert report["ok"] and len(report["checks"]) >= 10


def test_journal_lines_are_json_with_rpc_fields(box: Box) -> None:
    box.cli("health", check=False)
    lines = [line for line in box.journal("orchestrator").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line the daemon wrote is JSON
    rpcs = [r for r in records if r.get("event") == "rpc"]
    assert rpcs, "no rpc log line"
    assert {"method", "code", "duration_ms", "peer", "level", "timestamp"} <= set(rpcs[-1])


def test_reload_keeps_pid_and_applies_log_level(box: Box) -> None:
    pid = box.pid("orchestrator")
    box.sh("cat >/etc/agent-infra/orchestrator.toml",
           input=ORCHESTRATOR_TOML.format(level="warning"))
    try:
        box.sh("systemctl reload orchestrator")
        assert box.pid("orchestrator") == pid
        time.sleep(1.1)  # --since has whole seconds: none shared with lines before the reload
        since = box.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        box.cli("health", check=False)  # info-level rpc lines: no longer written
        time.sleep(0.5)
        after = [json.loads(line) for line in box.journal("orchestrator", since).splitlines()
                 if line.strip()]
        assert not [r for r in after if r.get("event") == "rpc"], after
        box.sh("systemctl reload env-manager")
        assert box.state("env-manager") == "active"
    finally:
        box.sh("cat >/etc/agent-infra/orchestrator.toml",
               input=ORCHESTRATOR_TOML.format(level="info"))
        box.sh("systemctl reload orchestrator")
    assert box.pid("orchestrator") == pid


@pytest.mark.parametrize("service", SERVICES)
def test_kill_9_restarts_and_keeps_queued_task(box: Box, service: str) -> None:
    box.sh("systemctl reset-failed env-manager orchestrator", check=False)
    port = 50101 if service == "env-manager" else 9097
    task = box.submit(f"sleep 2; echo after-kill-{service}")
    old = box.pid(service)
    began = time.monotonic()
    box.sh(f"kill -9 {old}")
    box.wait_for(f"{service} restarted", lambda: box.pid(service) not in (0, old)
                 and box.state(service) == "active", timeout=60)
    box.wait_for(f"{service} healthy", lambda: box.healthy(port), timeout=30)
    print(f"{service}: kill -9 -> active and healthy in {time.monotonic() - began:.1f}s")
    done = box.wait_task(task)
    assert done.returncode == 0, done.stdout + done.stderr


def test_invalid_config_fails_with_exit_2_and_no_restart(box: Box) -> None:
    box.sh("printf '[classes.cpu_short]\\nconcurrency = \"lots\"\\n' "
           ">/etc/agent-infra/orchestrator.toml")
    try:
        box.sh("systemctl reset-failed orchestrator; systemctl restart orchestrator", check=False,
               timeout=60)
        box.wait_for("orchestrator failed", lambda: box.state("orchestrator") == "failed",
                     timeout=30)
        assert box.prop("orchestrator", "ExecMainStatus") == "2"
        restarts = box.prop("orchestrator", "NRestarts")
        time.sleep(4)  # RestartSec=2s: a restart would have happened by now
        assert box.state("orchestrator") == "failed"
        assert box.prop("orchestrator", "NRestarts") == restarts
        assert "classes.cpu_short.concurrency" in box.journal("orchestrator")
    finally:
        box.sh("cat >/etc/agent-infra/orchestrator.toml",
               input=ORCHESTRATOR_TOML.format(level="info"))
        box.sh("systemctl reset-failed orchestrator; systemctl start dspy-agent.target",
               timeout=120)
    assert box.state("orchestrator") == "active"


def test_watchdog_kills_a_hung_daemon(box: Box) -> None:
    # Test-only: the hook variable and a short WatchdogSec come from a drop-in.
    box.sh("mkdir -p /etc/systemd/system/orchestrator.service.d && printf '%s\\n' '[Service]' "
           "'Environment=AGENT_INFRA_TEST_HANG_FILE=/run/agent-infra-test-hang' 'WatchdogSec=4s' "
           ">/etc/systemd/system/orchestrator.service.d/test-hang.conf && systemctl daemon-reload"
           " && systemctl restart orchestrator", timeout=60)
    try:
        old = box.pid("orchestrator")
        box.sh(f"echo {old} >/run/agent-infra-test-hang")
        began = time.monotonic()
        box.wait_for("watchdog restart", lambda: box.pid("orchestrator") not in (0, old)
                     and box.state("orchestrator") == "active", timeout=40)
        print(f"orchestrator: hung -> restarted by the watchdog in {time.monotonic() - began:.1f}s")
        log = box.sh("journalctl -u orchestrator -o cat --no-pager | tail -n 80").stdout
        assert "test_hang" in log and "Watchdog timeout" in log, log
    finally:
        box.sh("rm -rf /run/agent-infra-test-hang /etc/systemd/system/orchestrator.service.d "
               "&& systemctl daemon-reload && systemctl reset-failed orchestrator; "
               "systemctl restart orchestrator", timeout=60)


def test_stop_target_drains_and_start_is_fresh(box: Box) -> None:
    box.sh("systemctl reset-failed env-manager orchestrator", check=False)
    task = box.submit("sleep 6; echo survived-stop")
    time.sleep(2.5)  # dispatched: running in its container when the stop comes
    old = {s: box.pid(s) for s in SERVICES}
    began = time.monotonic()
    box.sh("systemctl stop dspy-agent.target", timeout=60)
    bare = time.monotonic() - began
    box.wait_for("both exited", lambda: all(box.pid(s) == 0 for s in SERVICES),
                 timeout=TIMEOUT_STOP + 5)
    stopped = time.monotonic() - began
    for service in SERVICES:
        assert box.state(service) == "inactive"
        assert box.prop(service, "ExecMainStatus") == "0"
        assert box.prop(service, "Result") == "success"
    print(f"systemctl stop dspy-agent.target returned in {bare:.2f}s; "
          f"both exited in {stopped:.1f}s")
    assert stopped < TIMEOUT_STOP
    # A start right after a bare stop: fresh processes for both.
    box.sh("systemctl start dspy-agent.target", timeout=120)
    box.sh("systemctl stop dspy-agent.target; systemctl start dspy-agent.target", timeout=120)
    for service in SERVICES:
        assert box.state(service) == "active"
        assert box.pid(service) not in (0, old[service])
    # The documented stop returns only once both have exited.
    box.sh("systemctl stop dspy-agent.target env-manager orchestrator", timeout=60)
    assert all(box.pid(s) == 0 for s in SERVICES)
    box.sh("systemctl start dspy-agent.target", timeout=120)
    done = box.wait_task(task)
    assert done.returncode == 0, done.stdout + done.stderr


def test_uninstall_leaves_no_unit(box: Box) -> None:
    box.sh("/root/src/scripts/deploy_production.sh --uninstall", timeout=120)
    units = box.sh("ls /etc/systemd/system; systemctl list-unit-files --no-pager "
                   "'env-manager*' 'orchestrator*' 'dspy-agent*'", check=False).stdout
    assert "env-manager.service" not in units and "dspy-agent.target" not in units, units
    assert "orchestrator.service" not in units, units
    assert box.sh("test ! -e /opt/agent-infra && test -e /etc/agent-infra/orchestrator.toml "
                  "&& test -d /var/lib/agent-infra", check=False).returncode == 0
