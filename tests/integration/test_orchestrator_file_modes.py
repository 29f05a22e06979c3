"""Issue 10, finding 12 (orchestrator side): the SQLite store's files are the owner's alone.

They hold payloads and env values; outside systemd (no StateDirectory mode) the umask used to
leave them 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_infra.orchestrator.store import Store


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(path: Path) -> dict[str, int]:
    return {file.name: stat.S_IMODE(file.stat().st_mode)
            for file in path.parent.iterdir() if file.name.startswith(path.name)}


async def write_row(store: Store) -> None:
    await store.write(lambda tx: tx.conn.execute(
        "INSERT INTO events (event_type, resource_id, data, ts) VALUES ('x', 'y', '{}', 0)"))


async def test_store_files_are_created_0600(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "data" / "orchestrator.sqlite3"
    store = await Store.open(path)
    try:
        await write_row(store)
        found = modes(path)
        assert set(found) == {path.name, f"{path.name}-wal", f"{path.name}-shm"}
        assert found == dict.fromkeys(found, 0o600)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await store.close()


async def test_store_files_left_0644_are_tightened(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "orchestrator.sqlite3"
    store = await Store.open(path)
    await write_row(store)
    await store.close()
    for file in path.parent.iterdir():
        file.chmod(0o644)  # as an earlier release left them
    store = await Store.open(path)
    try:
        await write_row(store)
        found = modes(path)
        assert found and found == dict.fromkeys(found, 0o600)
    finally:
        await store.close()
