"""Records of sandboxes made from warm containers, one JSON file each under the state dir.

A warm container's labels are fixed when the pool makes it (kind=warm, no sandbox in sight), so
a sandbox that claimed one is recorded here, before the hand-over, for a restarted env-manager:
the warm pool's start-up sweep keeps the containers these name (`container_ids`), and adoption
reads them back. Written to a temporary file and renamed (a kill -9 leaves the old file or the
new one, never half of one), mode 0600: a record holds the sandbox's id.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from .model import Sandbox


class Records:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    async def save(self, sandbox: Sandbox) -> None:
        if self.directory is not None:
            await asyncio.to_thread(_write, self.directory, sandbox.key, sandbox.record())

    async def delete(self, sandbox: Sandbox) -> None:
        if self.directory is not None:
            await asyncio.to_thread(_unlink, self.directory / f"{sandbox.key}.json")

    async def load(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every record: (its file, its content; None when unreadable)."""
        if self.directory is None:
            return []
        return await asyncio.to_thread(_read_all, self.directory)

    async def container_ids(self) -> set[str]:
        return {str(found.get("container_id")) for _, found in await self.load()
                if found is not None}


def _write(directory: Path, key: str, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = directory / f".{key}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(record, handle)
    os.replace(temporary, directory / f"{key}.json")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read_all(directory: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    if not directory.is_dir():
        return []
    found: list[tuple[Path, dict[str, Any] | None]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            content = None
        found.append((path, content if isinstance(content, dict) else None))
    return found
