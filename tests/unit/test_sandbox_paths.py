"""PutFile/GetFile paths, checked lexically before anything reaches the sandbox (issue 13)."""

from __future__ import annotations

import pytest
from agent_infra.env_manager.sandboxes.model import check_id, new_id, owner_of, sandbox_path
from agent_infra.runtime.errors import InvalidArgument

ROOT = "/tmp/sandbox"


@pytest.mark.parametrize(("path", "full"), [
    ("a.txt", "/tmp/sandbox/a.txt"),
    ("dir/./b", "/tmp/sandbox/dir/b"),
    ("/tmp/sandbox/x//y", "/tmp/sandbox/x/y"),
    ("a/", "/tmp/sandbox/a"),
])
def test_paths_inside_are_normalised(path: str, full: str) -> None:
    assert sandbox_path(path, ROOT) == full


@pytest.mark.parametrize("path", [
    "", "..", "../x", "a/../../x", "a/..", "/tmp/sandbox/../etc", "/etc/passwd", "/tmp/sandbox",
    "/tmp/sandboxed/x", "/tmp", ".", "./", "x\0y", "/" + "a" * 5000,
])
def test_hostile_paths_are_refused_naming_the_field(path: str) -> None:
    with pytest.raises(InvalidArgument, match="path"):
        sandbox_path(path, ROOT)


def test_ids_are_unguessable_and_owners_bind_the_caller() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(check_id(i) == i and len(i) >= 32 for i in ids)
    assert owner_of("a", "") != owner_of("b", "") != owner_of("a", "x")
    with pytest.raises(InvalidArgument, match="sandbox_id"):
        check_id("../../etc")
    with pytest.raises(InvalidArgument, match="on_behalf_of"):
        owner_of("a", "x" * 300)
