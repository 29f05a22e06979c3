"""Idempotent submit compares content by hash, across the hash earlier releases stored."""

from __future__ import annotations

import hashlib
import json

from agent_infra.orchestrator.model import TaskRequest


def legacy_hash(request: TaskRequest) -> str:
    """How releases before orjson hashed a request (stored in existing databases)."""
    canonical = json.dumps(
        [request.task_class, dict(sorted(request.payload.items())), request.priority,
         request.workflow_id, request.timeout_seconds, request.max_attempts],
        separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def request(**changes: object) -> TaskRequest:
    fields: dict[str, object] = {
        "id": "t-1", "task_class": "cpu_short",
        "payload": {"command": '["echo", "héllo ✓"]', "a": "\x7f\x01\n"},
        "priority": 3, "workflow_id": "wf", "timeout_seconds": 9, "max_attempts": 2}
    fields.update(changes)
    return TaskRequest(**fields)  # type: ignore[arg-type]


def test_the_same_content_matches_its_own_hash_and_the_legacy_one() -> None:
    original = request()
    again = request(payload=dict(reversed(list(original.payload.items()))))
    assert again.has_content(original.content_hash())
    assert again.has_content(legacy_hash(original))
    # Non-ASCII text encodes differently, so the legacy hash is really a second hash.
    assert legacy_hash(original) != original.content_hash()


def test_any_difference_in_content_does_not_match() -> None:
    original = request()
    for changed in (request(task_class="cpu_long"), request(priority=4),
                    request(workflow_id=""), request(timeout_seconds=10),
                    request(max_attempts=3), request(payload={"command": '["echo"]'})):
        assert not changed.has_content(original.content_hash())
        assert not changed.has_content(legacy_hash(original))


def test_the_id_is_not_content() -> None:
    assert request(id="t-2").has_content(request().content_hash())
