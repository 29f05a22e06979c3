"""The hand-over protocol of a warm container: what waits in it, and how a command reaches it.

A warm container (tasks/warm.py) is created and started with the class's isolation, running
`STUB` under /bin/sh as its main process with its stdin open. The stub reads one hand-over on
stdin, then `exec`s the command, which keeps the container's stdin (the task's own stdin follows
the hand-over on the same stream), stdout, stderr, user and limits, and becomes its main process.

The hand-over is a shell script that this module writes, never the caller: its first line is the
number of lines that follow, then the script, in which every caller value (argv, env names and
values, workdir) appears only as one single-quoted word (shlex.quote: nothing inside single
quotes is interpreted by any POSIX shell, newlines included). Env names must be shell names
([A-Za-z_][A-Za-z0-9_]*), and no value may hold a NUL; `fits` says when a request cannot be
handed over (then it goes the cold way). The script clears what the shell itself put in the
environment (SHLVL, PWD, OLDPWD), changes directory, exports the env and execs the argv, so the
process sees the same environment as in a container made for it: the image's env, HOSTNAME,
HOME and the env given.

Anything that stops the stub before the exec (no hand-over: its stdin closed; a workdir it
cannot enter; a command that cannot be executed) ends it with one last stderr line
"<mark> <reason>", where mark is the container's own random mark, given to the stub in its
argv and gone with it at the exec: a task cannot print it. `refusal` finds that line.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence

SHELL = "/bin/sh"
# $1: the container's mark. r: why the stub ended (the EXIT trap runs unless the exec succeeds).
STUB = """m=$1
trap 'printf "\\n%s %s\\n" "$m" "$r" >&2' EXIT
r=no-hand-over
IFS= read -r n || exit 125
case $n in ''|*[!0-9]*) r=bad-hand-over; exit 125;; esac
s=
while [ "$n" -gt 0 ]; do IFS= read -r l || exit 125; s="$s$l
"; n=$((n-1)); done
r=
eval "$s"
"""
# Scripts larger than this go the cold way: the stub reads its stdin a byte at a time.
MAX_SCRIPT_BYTES = 128 * 1024
EXIT_REFUSED = 125
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def new_mark() -> str:
    return f"agent-infra-warm-{secrets.token_hex(16)}"


def stub_command(mark: str) -> tuple[str, ...]:
    """The warm container's main process until its hand-over."""
    return (SHELL, "-c", STUB, "agent-infra-warm", mark)


def fits(argv: Sequence[str], env: Mapping[str, str], workdir: str | None) -> str | None:
    """None when this can be handed over; else why not (it then goes the cold way)."""
    if not argv:
        return "no command (the image's own would run)"
    if not argv[0] or argv[0].startswith("-"):
        return "argv[0] is empty or starts with '-'"
    if workdir is not None and not workdir.startswith("/"):
        return "workdir is not absolute"
    bad = next((name for name in env if not _NAME.fullmatch(name)), None)
    if bad is not None:
        return f"env name {bad[:40]!r} is not a shell name"
    words = [*argv, *env.values(), *([workdir] if workdir else [])]
    if any("\0" in word for word in words):
        return "a NUL in the command, env or workdir"
    if len(script(argv, env, workdir)) > MAX_SCRIPT_BYTES:
        return f"hand-over larger than {MAX_SCRIPT_BYTES} bytes"
    return None


def script(argv: Sequence[str], env: Mapping[str, str], workdir: str | None) -> bytes:
    """The hand-over as sent on stdin: its line count, then the script (see the docstring)."""
    lines = ["unset SHLVL"]
    if workdir:
        lines.append(f"r=workdir; cd {shlex.quote(workdir)} || exit {EXIT_REFUSED}")
    lines.append("unset PWD OLDPWD")
    if env:
        lines.append("export " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()))
    # No "--" (dash's exec takes it for the command): fits() refuses an argv[0] or a workdir
    # that could be read as an option.
    lines.append("r=exec; exec " + " ".join(shlex.quote(word) for word in argv))
    text = "\n".join(lines)
    body = text.encode("utf-8", "surrogatepass")
    return f"{text.count(chr(10)) + 1}\n".encode() + body + b"\n"


def refusal(stderr: str, mark: str) -> str | None:
    """Why the stub ended without running the command (its last stderr line), or None when the
    command ran."""
    last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
    if last.startswith(mark + " "):
        return last[len(mark) + 1:] or "the stub ended"
    return None
