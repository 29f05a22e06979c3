"""The warm hand-over protocol (tasks/handover.py) run by this host's /bin/sh: hostile argv, env
and workdir values reach the command as given and never as shell code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from agent_infra.env_manager.tasks.handover import (
    MAX_SCRIPT_BYTES,
    fits,
    new_mark,
    refusal,
    script,
    stub_command,
)

HOSTILE = [
    "$(touch {canary})", "`touch {canary}`", "; touch {canary}", "a\nb\n; touch {canary}",
    "'", "''", "'\"'\"'", '"', "\\", "\\'", "*", "$HOME", "${{IFS}}", "-n", "--", "",
    " leading and trailing ", "\t", "é ☃ 日本", "!!", "#comment", "a=b", "|| touch {canary}",
    "\r", "%s%n", "$(printf x)\n'$(touch {canary})'",
]


def run_stub(handover: bytes, cwd: Path, mark: str = "") -> subprocess.CompletedProcess[bytes]:
    # The stub as a warm container runs it, with the environment a container would give.
    return subprocess.run(list(stub_command(mark or new_mark())), input=handover,
                          capture_output=True, timeout=30, cwd=cwd, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/h"})


def test_hostile_argv_env_and_workdir_reach_the_command_verbatim(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    words = [word.format(canary=canary) for word in HOSTILE]
    workdir = tmp_path / "a b $(touch x) 'q'"
    workdir.mkdir()
    env = {f"V{index}": word for index, word in enumerate(words)}
    # The command prints its argv, its env and its cwd NUL-separated, then echoes stdin.
    argv = ["/bin/sh", "-c",
            'printf "%s\\0" "$@"; printf "==\\0"; env -0; printf "==\\0%s\\0" "$PWD"; '
            "pwd -P; cat", "argv0", *words]
    done = run_stub(script(argv, env, str(workdir)) + b"stdin\n$(touch x)\n", tmp_path)
    assert done.returncode == 0, done.stderr
    args, environ, rest = done.stdout.split(b"==\0")
    assert args.split(b"\0")[:-1] == [word.encode() for word in words]
    got = dict(item.split(b"=", 1) for item in environ.split(b"\0") if item)
    for name, word in env.items():
        assert got[name.encode()] == word.encode()
    assert b"SHLVL" not in got and b"OLDPWD" not in got  # the stub's own shell left nothing
    assert rest.split(b"\0", 1)[1] == f"{workdir}\n".encode() + b"stdin\n$(touch x)\n"
    assert not canary.exists() and not (tmp_path / "x").exists()


def test_the_stub_says_why_it_did_not_run_the_command_with_its_mark(tmp_path: Path) -> None:
    mark = new_mark()
    missing = run_stub(script(["true"], {}, str(tmp_path / "missing")), tmp_path, mark)
    assert refusal(missing.stderr.decode(), mark) == "workdir"
    nothing = run_stub(b"", tmp_path, mark)
    assert refusal(nothing.stderr.decode(), mark) == "no-hand-over"
    cannot = run_stub(script([str(tmp_path / "no-such-command")], {}, None), tmp_path, mark)
    assert refusal(cannot.stderr.decode(), mark) == "exec"
    bad = run_stub(b"1; touch x\n", tmp_path, mark)
    assert refusal(bad.stderr.decode(), mark) == "bad-hand-over"
    assert not (tmp_path / "x").exists()
    # A command that prints a mark (not its container's) or exits 125 itself is no refusal.
    ran = run_stub(script(["/bin/sh", "-c", f'echo "{new_mark()} exec" >&2; exit 125'], {},
                          None), tmp_path, mark)
    assert ran.returncode == 125 and refusal(ran.stderr.decode(), mark) is None


@pytest.mark.parametrize(("argv", "env", "workdir", "why"), [
    ([], {}, None, "no command"),
    (["true"], {"A-B": "1"}, None, "not a shell name"),
    (["true"], {"1A": "1"}, None, "not a shell name"),
    (["true"], {"A": "x\0y"}, None, "NUL"),
    (["tr\0ue"], {}, None, "NUL"),
    (["true"], {}, "/a\0b", "NUL"),
    (["-x"], {}, None, "starts with '-'"),
    ([""], {}, None, "empty"),
    (["true"], {}, "-P", "not absolute"),
    (["echo", "x" * MAX_SCRIPT_BYTES], {}, None, "larger than"),
])
def test_what_cannot_be_handed_over_goes_cold(argv: list[str], env: dict[str, str],
                                              workdir: str | None, why: str) -> None:
    reason = fits(argv, env, workdir)
    assert reason is not None and why in reason
    assert fits(["echo", "$(x)"], {"A_1": "$(x)"}, "/tmp") is None
