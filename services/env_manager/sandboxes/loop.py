"""A sandbox's main process: a command loop in /bin/sh (dash and busybox ash), and its framing.

The loop (LOOP_SCRIPT; argv: the working directory and a mark) makes the working directory as
the class's user and says on stdout whether it could ("<mark> 0"), exactly as the idle script
before it did, then reads its secret, one line on stdin (sent by env-manager, never in argv, env
or a file), then frames, one at a time: a line with the number of lines that follow, then that
many lines of a shell script written by `frame()`, which the loop evaluates in a subshell. When
the subshell ends the loop writes "\\x1e<secret> <exit code>\\n" on stdout and on stderr (stdout
and stderr are separate pipes, so each ends with its own marker), then reads the next frame. The
marker is found wherever it starts (output need not end with a newline); bytes are held back only
while they could be its start, which output rarely ends with (an ASCII record separator).

A frame's script changes directory, exports the env (with the exec's kill marker,
execs.MARKER_ENV), and `exec`s the argv with stdin from /dev/null or from a `printf` of the
bytes given (every byte that `read` or `printf` would take specially is an octal escape), in a
pipe. Every caller value is one single-quoted word (shlex.quote, as tasks/handover.py does),
never interpreted; `fits()` says when a request cannot be framed (then it goes the exec way).
Nothing runs between the fork and the exec but our own script, so no command sees the secret
in the shell's variables; a command running as the sandbox's user could still read the loop's
memory through /proc (it is the same user): the secret stops output that merely looks like a
marker (a log, a file's content), not a command bent on confusing its own sandbox's results.

At the end of its stdin (env-manager closed the attach: a restart, a shutdown, a broken
channel; the container's stdin is StdinOnce) the loop becomes the idle script: it waits for
ever and reaps the orphans reparented to it (between commands it reaps them at the next
command: the shell's wait takes any child).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from ..tasks import handover

EXIT_NO_WORKDIR = 126
# Stdin at most this large goes through the loop (the loop reads its frames a byte at a time).
MAX_STDIN_BYTES = 16 * 1024

# $1: the working directory, $2: the ready mark. `idle` is the old idle script: wait, reap.
LOOP_SCRIPT = """mkdir -p -m 700 -- "$1" 2>/dev/null; [ -d "$1" ] && [ -w "$1" ]
printf '%s %s\\n' "$2" "$?"
trap 'exit 0' TERM
idle() { exec 0</dev/null; while :; do sleep 86400 & wait; done; }
IFS= read -r k || idle
while IFS= read -r n; do
case $n in ''|*[!0-9]*) break;; esac
s=
while [ "$n" -gt 0 ]; do IFS= read -r l || idle; s="$s$l
"; n=$((n-1)); done
(eval "$s")
c=$?
printf '\\036%s %s\\n' "$k" "$c"
printf '\\036%s %s\\n' "$k" "$c" >&2
done
idle
"""

# printf format escapes: NUL and newline cannot be in a line read, the quote ends the word,
# backslash and percent are printf's own.
_ESCAPED = frozenset(b"\0\n'\\%")
_BYTE = [f"\\{b:03o}".encode() if b in _ESCAPED else bytes([b]) for b in range(256)]


def loop_command(workdir: str, mark: str) -> tuple[str, ...]:
    return (handover.SHELL, "-c", LOOP_SCRIPT, "agent-infra-sandbox", workdir, mark)


def secret_line(secret: str) -> bytes:
    return secret.encode() + b"\n"


def fits(argv: Sequence[str], env: Mapping[str, str], workdir: str,
         stdin: bytes | None) -> str | None:
    """None when the loop can run this; else why not (it then goes the exec way)."""
    if stdin is not None and len(stdin) > MAX_STDIN_BYTES:
        return f"stdin over {MAX_STDIN_BYTES} bytes"
    return handover.fits(argv, env, workdir)


def frame(argv: Sequence[str], env: Mapping[str, str], workdir: str,
          stdin: bytes | None) -> bytes:
    """The frame the loop reads for one command (check fits() first)."""
    lines = [f"cd {shlex.quote(workdir)} || exit {EXIT_NO_WORKDIR}",
             "unset PWD OLDPWD SHLVL"]
    if env:
        lines.append("export " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()))
    command = "exec " + " ".join(shlex.quote(word) for word in argv)
    text = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    if stdin:
        text += b"printf '" + b"".join(_BYTE[b] for b in stdin) + b"' | "
    text += command.encode("utf-8", "surrogatepass") + (b"" if stdin else b" </dev/null")
    count = text.count(b"\n") + 1
    return f"{count}\n".encode() + text + b"\n"


class EndScanner:
    """One stream's output up to the loop's end marker "\\x1e<secret> <code>\\n": what is the
    command's, held back while it could be the start of the marker, and the exit code."""

    def __init__(self, secret: str) -> None:
        self._needle = b"\x1e" + secret.encode() + b" "
        self._held = b""
        self.code: int | None = None

    @property
    def done(self) -> bool:
        return self.code is not None

    def feed(self, data: bytes) -> bytes:
        """The command's bytes in `data` (output after the marker is dropped)."""
        if self.done:
            return b""
        text = self._held + data
        at = text.find(self._needle)
        if at >= 0:
            end = text.find(b"\n", at + len(self._needle))
            if end < 0:
                self._held = text[at:]
                return text[:at]
            word = text[at + len(self._needle):end]
            self.code = int(word) if word.isdigit() and len(word) < 6 else -1
            self._held = b""
            return text[:at]
        keep = 0
        for size in range(min(len(self._needle) - 1, len(text)), 0, -1):
            if text.endswith(self._needle[:size]):
                keep = size
                break
        self._held = text[len(text) - keep:] if keep else b""
        return text[:len(text) - keep]
