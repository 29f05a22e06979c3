"""PutFile and GetFile: one file into or out of a sandbox, inside its working directory.

The path is checked lexically first (model.sandbox_path: no "..", no NUL, absolute only under the
working directory). Then the file is written or read by a small script run *as the sandbox's own
user* through the exec API, never through the engine's archive API (which works as root, follows
symlinks within the container, and would write into a class's rw mount through a symlink the
sandbox made). In the container the script resolves the directory (PutFile) or the file (GetFile)
with `readlink -f` and refuses it unless it is still under the working directory, and PutFile
refuses a symlink as the final component. A symlink swapped in between the check and the write
can only lead where the sandbox's user could write anyway: the kernel checks every access as that
user. Paths and sizes reach the script as arguments ("$1"...), never inside its text.
"""

from __future__ import annotations

from agent_infra.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

from ..docker.engine import DockerEngine
from . import execs

FILE_TIMEOUT = 60.0
_ESCAPES, _SYMLINK, _NOT_FILE, _MISSING, _TOO_LARGE, _FAILED = 11, 12, 13, 14, 16, 10

PUT_SCRIPT = (
    'root=$1; target=$2; mode=$3; dir=${target%/*}; '
    'mkdir -p -- "$dir" 2>/dev/null || exit 10; '
    'real=$(readlink -f -- "$dir") || exit 10; '
    'case "$real/" in "$root"/*) ;; *) exit 11;; esac; '
    'file="$real/${target##*/}"; '
    '[ -L "$file" ] && exit 12; [ -d "$file" ] && exit 13; '
    'cat > "$file" || exit 10; chmod "$mode" "$file" || exit 10')
GET_SCRIPT = (
    'root=$1; target=$2; limit=$3; '
    '[ -e "$target" ] || exit 14; '
    'real=$(readlink -f -- "$target") || exit 14; '
    'case "$real" in "$root"/*) ;; *) exit 11;; esac; '
    '[ -f "$real" ] || exit 13; '
    'size=$(wc -c < "$real") || exit 10; '
    '[ "$size" -le "$limit" ] || { echo "$size" >&2; exit 16; }; '
    'exec cat -- "$real"')


async def put(engine: DockerEngine, container_id: str, user: str, root: str, path: str,
              content: bytes, mode: int) -> None:
    end, _, err = await execs.collect(
        engine, container_id, ["/bin/sh", "-c", PUT_SCRIPT, "sh", root, path, f"{mode:o}"],
        user=user, stdin=content, timeout=FILE_TIMEOUT, output_limit=4096)
    _check(end.exit_code, end.timed_out, path, root, err, 0)


async def get(engine: DockerEngine, container_id: str, user: str, root: str, path: str,
              limit: int) -> bytes:
    end, out, err = await execs.collect(
        engine, container_id, ["/bin/sh", "-c", GET_SCRIPT, "sh", root, path, str(limit)],
        user=user, stdin=None, timeout=FILE_TIMEOUT, output_limit=limit)
    _check(end.exit_code, end.timed_out, path, root, err, limit)
    if end.truncated:
        raise ResourceExhausted(f"path {path!r:.200} grew over the limit of {limit} bytes "
                                "while it was read")
    return out


def _check(code: int, timed_out: bool, path: str, root: str, err: bytes, limit: int) -> None:
    shown = f"{path!r:.200}"
    if timed_out:
        raise FailedPrecondition(f"path {shown}: the file was not done within {FILE_TIMEOUT:g} s")
    if code == 0:
        return
    if code == _ESCAPES:
        raise InvalidArgument(f"path {shown} resolves (through a symlink) outside the sandbox's "
                              f"working directory {root}")
    if code == _SYMLINK:
        raise InvalidArgument(f"path {shown} is a symlink; PutFile does not write through "
                              "symlinks")
    if code == _NOT_FILE:
        raise InvalidArgument(f"path {shown} is not a regular file")
    if code == _MISSING:
        raise NotFound(f"path {shown}: no such file in the sandbox")
    if code == _TOO_LARGE:
        size = err.decode(errors="replace").strip()[:20]
        raise ResourceExhausted(f"path {shown} is {size} bytes, over the limit of {limit} bytes "
                                "(sandbox.max_file_bytes)")
    detail = err.decode(errors="replace").strip()[:300]
    raise FailedPrecondition(f"path {shown} could not be written or read in the sandbox (exit "
                             f"{code}; the sandbox's user may lack permission; the image "
                             f"needs /bin/sh): {detail}")
