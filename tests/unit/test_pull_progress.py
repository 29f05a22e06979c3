"""Folding the engine's per-layer pull events into one progress figure (no Docker needed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from agent_infra.env_manager.docker.images import PullFolder, PullProgress, split_tag

IMAGE = "127.0.0.1:5000/busybox:t1"


def fold(events: Iterable[Mapping[str, Any]]) -> list[PullProgress]:
    folder = PullFolder(IMAGE)
    items = [item for event in events if (item := folder.feed(event)) is not None]
    return [*items, folder.complete()]


def downloading(layer: str, current: int, total: int) -> dict[str, Any]:
    return {"status": "Downloading", "id": layer,
            "progressDetail": {"current": current, "total": total}}


def test_a_real_single_layer_pull() -> None:
    # As recorded from dockerd 20.10 pulling from a local registry; one layer already present.
    events: list[dict[str, Any]] = [
        {"status": "Pulling from busybox", "id": "t1"},
        {"status": "Already exists", "progressDetail": {}, "id": "0ca4af31cfa4"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "b720047d42d0"},
        downloading("b720047d42d0", 32768, 3001126),
        {"status": "Download complete", "progressDetail": {}, "id": "b720047d42d0"},
        {"status": "Extracting", "progressDetail": {"current": 32768, "total": 3001126},
         "id": "b720047d42d0"},
        {"status": "Extracting", "progressDetail": {"current": 3001126, "total": 3001126},
         "id": "b720047d42d0"},
        {"status": "Pull complete", "progressDetail": {}, "id": "b720047d42d0"},
        {"status": "Digest: sha256:fb70c216d29fb509545f455b6af2085"},
        {"status": "Status: Downloaded newer image for 127.0.0.1:5000/busybox:t1"},
    ]
    items = fold(events)
    assert [(i.status, i.current, i.total, i.percent) for i in items] == [
        ("downloading", 32768, 3001126, 1),
        ("downloading", 3001126, 3001126, 100),
        ("extracting", 3001126, 3001126, 100),
        ("complete", 3001126, 3001126, 100),
    ]
    assert items[0].message == "b720047d42d0: Downloading"
    assert items[-1].message == "Status: Downloaded newer image for 127.0.0.1:5000/busybox:t1"
    assert all(item.image == IMAGE for item in items)


def test_layers_are_summed_and_the_total_grows_as_layers_appear() -> None:
    folder = PullFolder(IMAGE)
    first = folder.feed(downloading("a", 50, 100))
    assert first is not None and (first.current, first.total, first.percent) == (50, 100, 50)
    second = folder.feed(downloading("b", 100, 300))
    assert second is not None and (second.current, second.total, second.percent) == (150, 400, 37)
    done = folder.feed({"status": "Download complete", "id": "a"})
    assert done is not None and (done.current, done.total) == (200, 400)
    # A progress figure past the layer's size is clamped to it.
    over = folder.feed(downloading("b", 500, 300))
    assert over is not None and (over.current, over.total, over.percent) == (400, 400, 100)


def test_events_that_change_nothing_are_not_reported() -> None:
    folder = PullFolder(IMAGE)
    assert folder.feed({"status": "Pulling fs layer", "id": "a", "progressDetail": {}}) is None
    assert folder.feed({"status": "Waiting", "id": "a", "progressDetail": {}}) is None
    assert folder.feed({"status": "Already exists", "id": "c", "progressDetail": {}}) is None
    assert folder.feed(downloading("a", 10, 100)) is not None
    assert folder.feed(downloading("a", 10, 100)) is None
    assert folder.feed({"status": "Verifying Checksum", "id": "a"}) is not None
    assert folder.feed({"status": "Download complete", "id": "a"}) is None


def test_a_layer_of_unknown_size_counts_no_bytes() -> None:
    folder = PullFolder(IMAGE)
    assert folder.feed({"status": "Download complete", "id": "tiny"}) is not None
    item = folder.feed(downloading("big", 0, 0))
    assert item is None or (item.current, item.total, item.percent) == (0, 0, 0)
    assert folder.complete().percent == 100


def test_an_error_event_is_an_error_item() -> None:
    folder = PullFolder(IMAGE)
    folder.feed(downloading("a", 10, 100))
    item = folder.feed({"errorDetail": {"message": "manifest unknown"},
                        "error": "manifest for x:1 not found: manifest unknown"})
    assert item is not None
    assert (item.status, item.current, item.total, item.percent) == ("error", 10, 100, 10)
    assert item.message == "manifest for x:1 not found: manifest unknown"
    only_detail = PullFolder(IMAGE).feed({"errorDetail": {"message": "denied"}})
    assert only_detail is not None and (only_detail.status, only_detail.message) == (
        "error", "denied")


def test_nothing_to_download_completes_at_100() -> None:
    items = fold([{"status": "Pulling from library/busybox", "id": "latest"},
                  {"status": "Digest: sha256:abc"},
                  {"status": "Status: Image is up to date for busybox:latest"}])
    assert [(i.status, i.percent, i.message) for i in items] == [
        ("complete", 100, "Status: Image is up to date for busybox:latest")]


@pytest.mark.parametrize(("image", "expected"), [
    ("busybox", ("busybox", "latest")),
    ("busybox:1.36", ("busybox", "1.36")),
    ("registry.invalid/agent-infra/nope:1", ("registry.invalid/agent-infra/nope", "1")),
    ("127.0.0.1:5000/busybox", ("127.0.0.1:5000/busybox", "latest")),
    ("127.0.0.1:5000/busybox:t1", ("127.0.0.1:5000/busybox", "t1")),
    ("busybox@sha256:abc", ("busybox@sha256:abc", "")),
])
def test_an_untagged_image_pulls_latest_not_every_tag(image: str,
                                                      expected: tuple[str, str]) -> None:
    assert split_tag(image) == expected
