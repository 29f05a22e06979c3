"""Reading one file out of a (stopped) container through the engine's archive API.

HEAD /containers/{id}/archive?path=P tells the file's size and kind (X-Docker-Container-Path-Stat)
without sending it, so a file over the limit is refused unread; GET then sends it as a tar. Works
for an exited container, needs no mount, and works with env-manager itself in a container.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import tarfile
from dataclasses import dataclass

import aiodocker
from agent_infra.runtime.errors import NotFound

from .engine import DockerEngine

STAT_HEADER = "X-Docker-Container-Path-Stat"


@dataclass(frozen=True)
class FileRead:
    data: bytes | None  # None: not read, `problem` says why
    problem: str = ""
    size: int = 0


async def read_file(engine: DockerEngine, container_id: str, path: str, limit: int) -> FileRead:
    """The regular file at the absolute container path `path`, if at most `limit` bytes."""
    what = f"read {path} from container {container_id}"

    async def head() -> dict[str, object]:
        # Straight through the client's session: aiodocker's error handling expects a JSON body,
        # and a HEAD answer has none.
        client = engine.client
        await client._check_version()
        url = client._canonicalize_url(f"containers/{container_id}/archive")
        async with client.session.request("HEAD", url, params={"path": path}) as response:
            if response.status >= 400:
                raise aiodocker.DockerError(response.status, response.reason or "")
            header = response.headers.get(STAT_HEADER, "")
        found = json.loads(base64.b64decode(header)) if header else {}
        return found if isinstance(found, dict) else {}

    try:
        info = await engine.call(what, head, attempts=1)
    except NotFound:
        return FileRead(None, "missing: the task wrote no such file")
    mode, size = int(str(info.get("mode", 0))), int(str(info.get("size", 0)))
    # The stat header carries Go's os.FileMode: any type bit set means not a regular file.
    if mode & 0xFFF00000 or info.get("linkTarget"):
        return FileRead(None, "not a regular file", size)
    if size > limit:
        return FileRead(None, f"too large: {size} bytes (limit {limit}); not read", size)

    async def get() -> bytes:
        archive = await engine.client.containers.container(container_id).get_archive(path)
        try:
            member = archive.next()
            if member is None or not member.isreg() or stat.S_ISDIR(member.mode):
                raise ValueError("not a regular file")
            if member.size > limit:
                raise OverflowError(member.size)
            handle = archive.extractfile(member)
            return handle.read(limit + 1) if handle is not None else b""
        finally:
            archive.close()

    try:
        data = await engine.call(what, get, attempts=1)
    except NotFound:
        return FileRead(None, "missing: the task wrote no such file")
    except ValueError as exc:
        return FileRead(None, str(exc), size)
    except OverflowError as exc:
        return FileRead(None, f"too large: {exc.args[0]} bytes (limit {limit}); not read")
    except (tarfile.TarError, aiodocker.DockerError, io.UnsupportedOperation) as exc:
        return FileRead(None, f"could not be read: {exc}", size)
    if len(data) > limit:
        return FileRead(None, f"too large: over {limit} bytes; not read", len(data))
    return FileRead(data, "", len(data))
