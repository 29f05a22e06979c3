"""The `agent-infra` CLI as people and scripts use it: a subprocess against real daemons.

One env-manager (a two-service busybox stack under a unique stack name) and one orchestrator
dispatching to it serve the whole module; `up`/`down` get daemons of their own, started by the
CLI itself. Every call checks the exit code, and ``--json`` output is parsed. The terminal mode
(rich progress bars and tables) runs under a real pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import queue
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_infra.client.cli import build_parser
from agent_infra.client.cli_common import UsageError, parse_since

from tests.daemon_support import REPO, free_port, running_daemon
from tests.docker_support import require_docker
from tests.env_support import (
    EXEC_READY,
    STACK_LABEL,
    busybox_service,
    config_text,
    remove_stack_containers,
    stack_name,
)

# Variables that would steer the CLI or the daemons it starts away from what a test sets up.
_STRIPPED_PREFIXES = ("ENV_MANAGER_", "ORCHESTRATOR_", "AGENT_INFRA_TOKEN", "NOTIFY_SOCKET",
                      "WATCHDOG_")
_STRIPPED = {"FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES",
             "CLICOLOR_FORCE"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> Result:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent_infra.client.cli", *args], cwd=REPO,
                          env=cli_env(env), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - began)


def run_in_pty(argv: Sequence[str], *, timeout: float = 120, columns: int = 120,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal; its exit code and
    everything it wrote (escape codes included)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_infra.client.cli", *argv], cwd=REPO,
        env=cli_env({"TERM": "xterm-256color", **(env or {})}), stdin=slave, stdout=slave,
        stderr=slave, close_fds=True, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            process.kill()
            raise AssertionError(f"{argv} did not finish within {timeout}s:\n"
                                 f"{b''.join(chunks).decode(errors='replace')}")
        code = process.wait(timeout=30)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, b"".join(chunks).decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without escape codes, one screen line per line."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


# --- the daemons ----------------------------------------------------------------------------------


@dataclass
class Stack:
    env_manager: str
    orchestrator: str
    name: str
    beta_port: int
    workdir: Path

    def args(self) -> list[str]:
        return ["--orchestrator", self.orchestrator, "--env-manager", self.env_manager]

    def cli(self, *args: str, **kwargs: Any) -> Result:
        return run_cli(*self.args(), *args, **kwargs)


# A class allows it (PullImages takes only configured images); no registry has it.
MISSING_IMAGE = "registry.invalid/agent-infra/nope:cli"


def stack_services(beta_port: int) -> str:
    """alpha (exec check) <- beta (http check, a published port)."""
    return (busybox_service("alpha", "echo alpha-says-hello; " + _ready(), extra=EXEC_READY)
            + busybox_service(
                "beta", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 "
                        "-h /www", depends_on='alpha = "healthy"',
                extra=f'ports = ["{beta_port}:8080"]\nhealthcheck = {{ type = "http", '
                      f'port = 8080, path = "/", interval = "1s" }}\n'))


def _ready() -> str:
    return "sleep 0.3; touch /tmp/ready; exec sleep 1d"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    docker = await require_docker()
    await docker.close()
    workdir = tmp_path_factory.mktemp("cli")
    name = stack_name()
    beta_port = free_port()
    config = workdir / "stack.toml"
    config.write_text(config_text(name, stack_services(beta_port), pullable=[MISSING_IMAGE]))
    try:
        async with running_daemon(
                "env-manager", workdir,
                args=["--config", str(config), "--state-dir", str(workdir / "em-state")]
        ) as env_manager, running_daemon(
                "orchestrator", workdir,
                args=["--env-managers", env_manager.grpc_addr,
                      "--data-dir", str(workdir / "orch-data")]) as orchestrator:
            yield Stack(env_manager.grpc_addr, orchestrator.grpc_addr, name, beta_port,
                        workdir)
    finally:
        await remove_stack_containers(name)


def unreachable() -> list[str]:
    """Connection options naming addresses where nothing listens."""
    return ["--orchestrator", f"127.0.0.1:{free_port()}",
            "--env-manager", f"127.0.0.1:{free_port()}", "--timeout", "1"]


# --- no daemons needed ----------------------------------------------------------------------------


def command_paths() -> list[list[str]]:
    """Every command and sub-command the parser knows, from the parser itself."""
    paths: list[list[str]] = [[]]

    def walk(parser: Any, prefix: list[str]) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_help_of_every_command_shows_an_example() -> None:
    paths = command_paths()
    expected = {"up", "down", "status", "health", "services start", "services stop",
                "services restart", "services logs", "pull", "submit", "run", "wait", "tasks",
                "cancel", "events", "workflow create", "workflow run", "workflow watch",
                "workflow list", "console", "sandbox create", "sandbox exec", "sandbox ls",
                "sandbox rm", "sandbox put", "sandbox get"}
    assert expected <= {" ".join(path) for path in paths}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda path: run_cli(*path, "--help", timeout=60), paths))
    for path, result in zip(paths, results, strict=True):
        assert result.code == 0, (path, str(result))
        assert "examples:\n  agent-infra" in result.out, (path, result.out)
        assert "\x1b[" not in result.out


def test_usage_errors_exit_2_before_connecting(tmp_path: Path) -> None:
    cases = [
        ["no-such-command"],
        ["submit", "--priority", "high"],
        ["submit", "--set", "novalue", "--", "true"],
        ["submit", "--payload-file", str(tmp_path / "missing.json")],
        ["events", "--since", "the day before"],
        ["services", "stop"],
        ["services", "start", "--override", "noequals"],
        ["workflow", "create", "wf", str(tmp_path / "missing.json")],
        ["wait"],
        ["--token-file", str(tmp_path / "no-token"), "tasks"],
    ]
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append(["submit", "--payload-file", str(tmp_path / "list.json")])
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda case: run_cli(*unreachable(), *case, timeout=60), cases))
    for case, result in zip(cases, results, strict=True):
        assert result.code == 2, (case, str(result))
        assert result.out == "", (case, str(result))
        assert result.err.strip(), case
    # The CLI's own errors are one line naming the value.
    assert results[2].err.strip() == "agent-infra: error: --set 'novalue': expected KEY=VALUE"


def test_unreachable_daemon_exits_3_quickly_naming_the_address() -> None:
    cases = [["tasks"], ["status"], ["health"], ["submit", "--", "true"], ["run", "--", "true"],
             ["services", "logs", "x"], ["workflow", "list"], ["events", "-f"], ["down"]]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda case: (case, run_cli(*unreachable(), *case, timeout=60)),
                                cases))
    for case, result in results:
        assert result.code == 3, (case, str(result))
        assert result.seconds < 30, (case, result.seconds)  # no hang, even on a busy machine
        # health reports the unreachable daemon in its table; the others on stderr.
        assert "127.0.0.1:" in (result.out if case == ["health"] else result.err), str(result)
    tasks = results[0][1]
    assert tasks.err.count("\n") == 1 and "could not connect to orchestrator" in tasks.err
    # Measured alone against the interpreter's own start-up: the 1 s connect timeout, no more.
    baseline = run_cli("--version").seconds
    alone = run_cli(*unreachable(), "tasks")
    assert alone.code == 3 and alone.seconds < baseline + 1 + 2.5, (alone.seconds, baseline)
    # --json keeps reporting to scripts: status names which daemon is missing.
    status = run_cli(*unreachable(), "status", "--json")
    assert status.code == 3
    assert set(status.json()["errors"]) == {"env-manager", "orchestrator"}


def test_since_accepts_unix_seconds_iso_datetimes_and_durations() -> None:
    now = 1_700_000_000.0
    assert parse_since("1699999000", now=now) == 1699999000.0
    assert parse_since("10m", now=now) == now - 600
    assert parse_since("1h30m", now=now) == now - 5400
    assert parse_since("2023-11-14T22:13:20+00:00", now=now) == now
    with pytest.raises(UsageError):
        parse_since("yesterday", now=now)


# --- against the module's daemons -----------------------------------------------------------------


def test_health_json(stack: Stack) -> None:
    result = stack.cli("health", "--json")
    assert result.code == 0, str(result)
    health = result.json()
    assert health["healthy"] is True
    assert health["env_manager"]["status"] == "SERVING"
    assert health["orchestrator"]["services"] == {
        "store": "SERVING", f"env-manager {stack.env_manager}": "SERVING",
        "orchestrator": "healthy", "grpc_server": "healthy"}
    piped = stack.cli("health")
    assert piped.code == 0 and piped.out.startswith("COMPONENT")


def test_services_start_streams_json_lines_and_status_reads_them_back(stack: Stack) -> None:
    started = stack.cli("services", "start", "--json")
    assert started.code == 0, str(started)
    updates = started.json_lines()
    assert {u["service_name"] for u in updates} == {"alpha", "beta"}
    assert set(updates[0]) == {"service_name", "status", "message", "progress"}
    final = {u["service_name"]: u["status"] for u in updates}
    assert final == {"alpha": "healthy", "beta": "healthy"}
    assert updates[-1]["progress"] == 100

    status = stack.cli("status", "--json")
    assert status.code == 0, str(status)
    doc = status.json()
    assert set(doc["services"]) == {"alpha", "beta"}
    beta = doc["services"]["beta"]
    assert beta["status"] == "running" and beta["health"] == "healthy"
    assert beta["ports"] == [stack.beta_port]
    assert beta["resource_usage"]["memory_bytes"] > 0
    assert set(doc["queues"]["cpu_short"]) == {"pending", "running", "completed", "failed",
                                              "cancelled"}

    piped = stack.cli("status")
    assert piped.code == 0 and "\x1b[" not in piped.out
    lines = piped.out.splitlines()
    assert lines[0].split() == ["SERVICE", "STATE", "HEALTH", "PORTS", "CPU", "MEMORY",
                                "UPTIME", "CONTAINER"]
    assert any(line.split()[:4] == ["beta", "running", "healthy", str(stack.beta_port)]
               for line in lines)
    assert any(line.split()[:1] == ["cpu_short"] for line in lines)


def test_services_logs_restart_stop(stack: Stack) -> None:
    assert stack.cli("services", "start", "alpha").code == 0
    logs = stack.cli("services", "logs", "alpha", "--tail", "5", "--json")
    assert logs.code == 0, str(logs)
    entries = logs.json_lines()
    assert any(e["message"].strip() == "alpha-says-hello" for e in entries), entries
    assert {e["stream"] for e in entries} <= {"stdout", "stderr"}
    assert "alpha-says-hello" in stack.cli("services", "logs", "alpha").out

    missing = stack.cli("services", "logs", "nosuch")
    assert missing.code == 1
    assert missing.err.count("\n") == 1 and "NOT_FOUND" in missing.err

    restarted = stack.cli("services", "restart", "beta", "--json")
    assert restarted.code == 0, str(restarted)
    assert restarted.json()["beta"]["success"] is True

    stopped = stack.cli("services", "stop", "beta", "--json")
    assert stopped.code == 0, str(stopped)
    assert stopped.json() == {"success": True, "service_results": {"beta": "stopped"}}
    assert stack.cli("status", "--json").json()["services"]["beta"]["status"] == "stopped"


def test_services_start_shows_live_progress_on_a_terminal(stack: Stack) -> None:
    assert stack.cli("services", "stop", "beta").code == 0
    code, output = run_in_pty([*stack.args(), "services", "start", "beta"])
    assert code == 0, output
    text = plain(output)
    assert "\x1b[" in output, "no escape codes: the CLI did not see a terminal"
    assert "━" in text and "100%" in text, text  # the rich progress bar, finished
    assert re.search(r"beta\s+healthy", text), text
    assert re.search(r"alpha\s+healthy", text), text
    assert re.search(r"SERVICE\s+STATE", text), text
    # Piped, the same command prints one plain line per transition.
    assert stack.cli("services", "stop", "beta").code == 0
    piped = stack.cli("services", "start", "beta")
    assert piped.code == 0 and "\x1b[" not in piped.out
    assert re.search(r"^\[100%\] beta\s+healthy", piped.out, re.M), piped.out


def test_pull_reports_each_image_and_fails_without_a_registry(stack: Stack) -> None:
    image = MISSING_IMAGE
    result = stack.cli("pull", image, "--json")
    assert result.code == 1, str(result)
    items = result.json_lines()
    assert items and {i["image_name"] for i in items} == {image}
    assert items[-1]["status"] == "error" and items[-1]["message"]
    piped = stack.cli("pull", image)
    assert piped.code == 1 and f"{image}  error" in piped.out
    assert piped.err.startswith(f"agent-infra: {image}: ")


def test_submit_wait_and_tasks(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    submitted = stack.cli("submit", "--json", "--id", f"ok-{tag}", "--priority", "3",
                          "--set", "command=echo hello from $GREETING",
                          "--set", 'env={"GREETING": "cli"}')
    assert submitted.code == 0, str(submitted)
    assert submitted.json() == {"success": True, "task_id": f"ok-{tag}", "error": ""}

    waited = stack.cli("wait", f"ok-{tag}", "--json")
    assert waited.code == 0, str(waited)
    status = waited.json()
    assert status["status"] == "completed" and status["priority"] == 3
    assert status["result"]["stdout"] == "hello from cli\n"
    assert status["result"]["exit_code"] == "0"

    # Plain `submit` prints only the id; the payload from a file, then from stdin.
    (tmp_path / "task.json").write_text(json.dumps({"command": ["echo", "from-file"]}))
    from_file = stack.cli("submit", "--payload-file", str(tmp_path / "task.json"),
                          "--id", f"file-{tag}")
    assert from_file.code == 0 and from_file.out == f"file-{tag}\n", str(from_file)
    from_stdin = stack.cli("submit", "-", "--id", f"stdin-{tag}",
                           stdin=json.dumps({"command": "echo from-stdin"}))
    assert from_stdin.code == 0 and from_stdin.out == f"stdin-{tag}\n", str(from_stdin)
    assert stack.cli("wait", f"file-{tag}").out == "from-file\n"
    assert stack.cli("wait", f"stdin-{tag}").out == "from-stdin\n"

    # The same id with other content is refused with the server's message.
    clash = stack.cli("submit", "--id", f"ok-{tag}", "--", "echo", "different")
    assert clash.code == 1 and "ALREADY_EXISTS" in clash.err and clash.err.count("\n") == 1

    listed = stack.cli("tasks", "--json", "--status", "completed", "--limit", "2")
    assert listed.code == 0, str(listed)
    tasks = listed.json()
    assert len(tasks) == 2 and all(t["status"] == "completed" for t in tasks)
    assert [t["task_id"] for t in tasks] == [f"stdin-{tag}", f"file-{tag}"]  # newest first
    every = stack.cli("tasks", "--json", "--limit", "0").json()
    assert {f"ok-{tag}", f"file-{tag}", f"stdin-{tag}"} <= {t["task_id"] for t in every}

    piped = stack.cli("tasks", "--limit", "3")
    assert piped.code == 0 and piped.out.splitlines()[0].split()[:3] == ["TASK", "STATUS",
                                                                         "CLASS"]
    assert piped.out.splitlines()[1].split()[:2] == [f"stdin-{tag}", "completed"]


def test_run_exit_code_follows_the_task(stack: Stack) -> None:
    ok = stack.cli("run", "--set", "command=echo hi")
    assert ok.code == 0, str(ok)
    assert ok.out == "hi\n"
    assert "completed" in ok.err

    failed = stack.cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert failed.code == 1, str(failed)
    assert failed.out == "out\n"
    assert "err\n" in failed.err and "exit code 3" in failed.err

    as_json = stack.cli("run", "--json", "--", "false")
    assert as_json.code == 1, str(as_json)
    doc = as_json.json()
    assert doc["status"] == "failed" and doc["result"]["exit_code"] == "1"

    # --wait-timeout: the task keeps running; the exit code says it did not complete.
    slow_id = f"slow-{uuid.uuid4().hex[:6]}"
    # (Short sleeps: a cancelled task's container runs to its end in env-manager, holding a
    # slot of the class meanwhile.)
    slow = stack.cli("run", "--wait-timeout", "1", "--id", slow_id, "--", "sleep", "4")
    assert slow.code == 1 and "still running" in slow.err, str(slow)
    assert stack.cli("cancel", slow_id).code == 0


def test_cancel(stack: Stack) -> None:
    task_id = f"sleepy-{uuid.uuid4().hex[:8]}"
    assert stack.cli("submit", "--id", task_id, "--", "sleep", "4").code == 0
    cancelled = stack.cli("cancel", task_id, "--json")
    assert cancelled.code == 0, str(cancelled)
    assert cancelled.json() == {"task_id": task_id, "success": True, "status": "cancelled",
                                "error": ""}
    waited = stack.cli("wait", task_id, "--json")
    assert waited.code == 1 and waited.json()["status"] == "cancelled"

    done = f"done-{uuid.uuid4().hex[:8]}"
    assert stack.cli("run", "--id", done, "--", "true").code == 0
    too_late = stack.cli("cancel", done)
    assert too_late.code == 1 and "completed" in too_late.err, str(too_late)
    unknown = stack.cli("cancel", "no-such-task")
    assert unknown.code == 1 and "NOT_FOUND" in unknown.err


def test_events_replay_and_follow(stack: Stack) -> None:
    task_id = f"ev-{uuid.uuid4().hex[:8]}"
    assert stack.cli("run", "--id", task_id, "--", "true").code == 0
    replay = stack.cli("events", "--since", "10m", "--type", "task_completed", "--json")
    assert replay.code == 0, str(replay)
    events = replay.json_lines()
    assert {e["event_type"] for e in events} == {"task_completed"}
    assert task_id in {e["resource_id"] for e in events}
    piped = stack.cli("events", "--since", str(int(time.time()) - 600))
    assert piped.code == 0
    assert re.search(rf"task_submitted\s+{task_id}\s", piped.out), piped.out

    # -f: live events as they happen (--since covers the moment before it subscribed).
    follower = subprocess.Popen(
        [sys.executable, "-m", "agent_infra.client.cli", *stack.args(), "events", "-f",
         "--since", "5s", "--type", "task_submitted", "--json"], cwd=REPO, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        live_id = f"live-{uuid.uuid4().hex[:8]}"
        assert stack.cli("submit", "--id", live_id, "--", "true").code == 0
        seen = read_json_lines_until(follower, lambda e: e["resource_id"] == live_id)
        assert seen[-1]["event_type"] == "task_submitted"
        assert follower.poll() is None, "events -f ended by itself"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
        assert follower.stderr is not None
        follower.stderr.close()
    assert follower.returncode == 130  # Ctrl-C: no traceback, the shell's code for SIGINT


def read_json_lines_until(process: subprocess.Popen[str], found: Any,
                          timeout: float = 30) -> list[Any]:
    """JSON lines from the process's stdout until one satisfies `found` (a reader thread: a
    select() on a buffered pipe misses lines already read into the buffer)."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(json.loads(line))
        if found(seen[-1]):
            return seen
    raise AssertionError(f"not seen within {timeout}s; got {seen}")


def test_workflows(stack: Stack, tmp_path: Path) -> None:
    workflow = f"wf-{uuid.uuid4().hex[:8]}"
    spec = {"steps": [
        {"id": "greet", "payload": {"command": "echo hello {{ input.name }}"}},
        {"id": "shout", "depends_on": ["greet"],
         "payload": {"command": "echo '{{ steps.greet.result.stdout }}' | tr a-z A-Z"}},
    ]}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    created = stack.cli("workflow", "create", workflow, str(spec_file), "--name", "greeting",
                        "--json")
    assert created.code == 0, str(created)
    assert created.json() == {"success": True, "workflow_id": workflow, "version": 1,
                              "error": ""}
    again = stack.cli("workflow", "create", workflow, "-", stdin=json.dumps(spec))
    assert again.code == 0 and again.out == f"{workflow} version 1\n", str(again)

    listed = stack.cli("workflow", "list", "--json")
    assert listed.code == 0
    mine = [w for w in listed.json() if w["workflow_id"] == workflow]
    assert mine and mine[0]["total_steps"] == 2 and mine[0]["name"] == "greeting"

    watched = stack.cli("workflow", "run", workflow, "--input", "name=cli", "--watch", "--json")
    assert watched.code == 0, str(watched)
    lines = watched.json_lines()
    assert lines[0]["success"] is True and lines[0]["created"] is True
    assert lines[-1]["status"] == "completed" and lines[-1]["steps_completed"] == 2
    assert lines[-1]["output"]["shout.stdout"].strip() == "HELLO CLI"

    key = f"key-{uuid.uuid4().hex[:6]}"
    run_id = stack.cli("workflow", "run", workflow, "--key", key, "--input", "name=x").out.strip()
    assert run_id.startswith("run-")
    assert stack.cli("workflow", "run", workflow, "--key", key).out.strip() == run_id
    followed = stack.cli("workflow", "watch", run_id)
    assert followed.code == 0, str(followed)
    assert "HELLO X" in followed.out.splitlines(), followed.out

    broken = f"wf-broken-{uuid.uuid4().hex[:6]}"
    (tmp_path / "broken.json").write_text(json.dumps(
        {"steps": [{"id": "boom", "payload": {"command": "exit 4"}},
                   {"id": "after", "depends_on": ["boom"], "payload": {"command": "true"}}]}))
    assert stack.cli("workflow", "create", broken, str(tmp_path / "broken.json")).code == 0
    failed = stack.cli("workflow", "run", broken, "--watch")
    assert failed.code == 1, str(failed)
    assert "failed" in failed.out

    (tmp_path / "cycle.json").write_text(json.dumps(
        {"steps": [{"id": "a", "depends_on": ["b"], "payload": {}},
                   {"id": "b", "depends_on": ["a"], "payload": {}}]}))
    cycle = stack.cli("workflow", "create", f"wf-cycle-{uuid.uuid4().hex[:6]}",
                      str(tmp_path / "cycle.json"))
    assert cycle.code == 1 and "cycle" in cycle.err and cycle.err.count("\n") == 1, str(cycle)


# --- up / down: daemons the CLI starts itself -----------------------------------------------------


def _pids(state_dir: Path) -> dict[str, int]:
    found = {}
    for name in ("env-manager", "orchestrator"):
        with contextlib.suppress(OSError, ValueError):
            found[name] = int((state_dir / f"{name}.pid").read_text())
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


@contextlib.contextmanager
def killed_afterwards(state_dir: Path) -> Iterator[None]:
    """Whatever happens in the test, no daemon it made `up` start outlives it."""
    try:
        yield
    finally:
        for pid in _pids(state_dir).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _stack_containers(stack: str) -> list[str]:
    docker = await require_docker()
    try:
        found = await docker.containers.list(all=True,
                                             filters={"label": [f"{STACK_LABEL}={stack}"]})
        return [container.id for container in found]
    finally:
        await docker.close()


def test_up_starts_the_daemons_with_progress_on_a_terminal_and_down_stops_them(
        tmp_path: Path) -> None:
    asyncio.run(_stack_containers("none"))  # fails (or skips) the test without an engine
    name = stack_name()
    config = tmp_path / "stack.toml"
    config.write_text(config_text(name, stack_services(free_port())))
    state_dir = tmp_path / "state"
    addresses = ["--orchestrator", f"127.0.0.1:{free_port()}",
                 "--env-manager", f"127.0.0.1:{free_port()}"]
    try:
        with killed_afterwards(state_dir):
            code, output = run_in_pty([*addresses, "up", "--config", str(config),
                                       "--state-dir", str(state_dir)])
            text = plain(output)
            assert code == 0, text
            assert "env-manager started on" in text and "orchestrator started on" in text
            assert "━" in text and "100%" in text, text
            assert re.search(r"alpha\s+healthy", text) and re.search(r"beta\s+healthy", text)
            pids = _pids(state_dir)
            assert set(pids) == {"env-manager", "orchestrator"}
            assert all(_alive(pid) for pid in pids.values())

            # The daemons outlived `up`: the rest of the CLI talks to them.
            assert run_cli(*addresses, "health").code == 0
            ran = run_cli(*addresses, "run", "--", "echo", "via-up")
            assert ran.code == 0 and ran.out == "via-up\n", str(ran)
            again = run_cli(*addresses, "up", "--state-dir", str(state_dir))
            assert again.code == 0, str(again)
            assert "env-manager already answers" in again.err

            down = run_cli(*addresses, "down", "--state-dir", str(state_dir), "--json")
            assert down.code == 0, str(down)
            report = down.json()
            assert report["services"] == {"alpha": "stopped", "beta": "stopped"}
            assert {d["name"]: d["result"] for d in report["daemons"]} == {
                "orchestrator": "stopped", "env-manager": "stopped"}
            assert not any(_alive(pid) for pid in pids.values())
            assert _pids(state_dir) == {}
            assert asyncio.run(_stack_containers(name)) == []
            # Nothing left to stop: down says so and exits 3 (nothing answers).
            assert run_cli(*addresses, "--timeout", "1", "down",
                           "--state-dir", str(state_dir)).code == 3
    finally:
        asyncio.run(remove_stack_containers(name))

