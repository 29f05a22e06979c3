"""The original composer's typed graph, read into the one workflow model (spec.StepSpec).

A typed workflow (ORIGINAL-CONTRACTS.md section 2) is

    {"id", "name", "description", "tags": [], "tenant", "version", "created_at", "updated_at",
     "nodes": [{"id", "name", "type", "description", "position": {"x", "y"}, TYPE: {...config}}],
     "edges": [{"id", "source", "target", "kind": "data|control|reward", "label"}]}

A document is typed when one of its nodes has a `type` or one of its edges a `source`/`target`
(the untyped graph form uses `from`/`to`). Each node becomes one step whose `depends_on` are the
sources of the edges that target it; its `kind` is the node type and its `config` the node's
config object. What each kind does when it runs is in nodes.py.

Checked here (InvalidArgument naming the node or edge and the field): the node types, each
config's required fields (`signature.prompt`, `verifier.command`, `reward.metric`,
`training.method`/`skill`, `deployment.tenant`/`domain`/`channel`, a non-empty `custom`) and the
types of its known fields; unique node and edge ids; edges naming existing nodes; no cycle
(spec.py). Config keys beyond the known ones are kept as they are. `name` is required at the
workflow level (workflows.create checks it, since gRPC carries it beside the spec).

Everything the composer sent but the steps do not use (`tags`, `tenant`, `version`, each node's
`name`, `description` and `position`, each edge's `id`, `kind` and `label`) is kept in
`TypedGraph.document` and returned unchanged. The header keys (`id`, `name`, `description`,
`created_at`, `updated_at`) are the workflow's, not the spec's: `split_header` takes them off.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from agent_infra.runtime.errors import InvalidArgument
from agent_infra.runtime.parsing import json_type_name

from . import templating

NODE_TYPES = ("signature", "verifier", "reward", "training", "deployment", "custom")
# Node types whose step runs a task; the others complete at once with their config as result.
TASK_TYPES = frozenset({"signature", "verifier", "training"})
HEADER_KEYS = ("id", "name", "description", "created_at", "updated_at")
META_KEYS = ("tags", "tenant", "version")
NODE_KEYS = frozenset({"id", "name", "type", "description", "position", *NODE_TYPES})
EDGE_KEYS = frozenset({"id", "source", "target", "kind", "label"})
EDGE_KINDS = ("", "data", "control", "reward")
GPU_DOMAINS = frozenset({"gpu", "cuda", "accelerated"})
SLURM_CLASS = "gpu_slurm"
GPU_CLASS = "gpu"
CPU_CLASS = "cpu_short"

# (field, JSON type name, required) per config; unknown fields are kept unchecked.
_STR, _NUM, _INT, _BOOL, _STRS, _CMD = "string", "number", "integer", "boolean", "strings", "cmd"
CONFIG_FIELDS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "signature": (("prompt", _STR, True), ("tools", _STRS, False), ("runtime", _STR, False),
                  ("max_tokens", _INT, False), ("temperature", _NUM, False),
                  ("execution_domain", _STR, False)),
    "verifier": (("command", _CMD, True), ("weight", _NUM, False), ("penalty", _NUM, False),
                 ("timeout_sec", _INT, False), ("success_signal", _STR, False)),
    "reward": (("metric", _STR, True), ("target", _NUM, False), ("aggregator", _STR, False),
               ("window", _INT, False), ("scale", _NUM, False)),
    "training": (("method", _STR, True), ("skill", _STR, True), ("dataset", _STR, False),
                 ("schedule", _STR, False), ("max_steps", _INT, False),
                 ("slurm_profile", _STR, False), ("trigger_metric", _STR, False),
                 ("command", _CMD, False)),
    "deployment": (("tenant", _STR, True), ("domain", _STR, True), ("channel", _STR, True),
                   ("strategy", _STR, False), ("autopromote", _BOOL, False)),
    "custom": (),
}
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    task_class: str  # "" for a node that runs no task
    config: dict[str, Any]
    depends_on: tuple[str, ...]
    timeout_seconds: int


@dataclass(frozen=True)
class TypedGraph:
    """The typed document minus its header, as the composer sent it (canonical JSON text)."""

    document_json: str

    @property
    def document(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.document_json)
        return value


def is_typed(document: Mapping[str, Any]) -> bool:
    nodes, edges = document.get("nodes"), document.get("edges")
    if isinstance(nodes, list) and any(isinstance(n, dict) and "type" in n for n in nodes):
        return True
    return isinstance(edges, list) and any(
        isinstance(e, dict) and ("source" in e or "target" in e) for e in edges)


def split_header(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, spec): the workflow's own keys, and the rest, which is the spec."""
    header = {key: document[key] for key in HEADER_KEYS if key in document}
    spec = {key: value for key, value in document.items() if key not in HEADER_KEYS}
    for key in ("id", "name", "description"):
        if key in header and not isinstance(header[key], str):
            raise InvalidArgument(f"{key} must be a string, got {json_type_name(header[key])}")
    return header, spec


def step_class(node_type: str, config: Mapping[str, Any]) -> str:
    if node_type == "signature":
        domain = str(config.get("execution_domain") or "").strip().lower()
        return GPU_CLASS if domain in GPU_DOMAINS else CPU_CLASS
    if node_type == "verifier":
        return CPU_CLASS
    if node_type == "training":
        return SLURM_CLASS
    return ""


def parse(document: dict[str, Any], known_classes: Collection[str] | None,
          ) -> tuple[list[Node], TypedGraph]:
    """The nodes as steps (unsorted, not yet checked for cycles) and the kept document."""
    unknown = sorted(set(document) - {"nodes", "edges", *META_KEYS})
    if unknown:
        raise InvalidArgument(
            f"workflow has unknown keys: {', '.join(unknown)} (allowed: "
            f"{', '.join(sorted({'nodes', 'edges', *META_KEYS, *HEADER_KEYS}))})")
    _check_meta(document)
    raw_nodes = document.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InvalidArgument("nodes must be a non-empty list: a workflow needs at least one node")
    raw_edges = document.get("edges", [])
    if not isinstance(raw_edges, list):
        raise InvalidArgument(f"edges must be a list, got {json_type_name(raw_edges)}")
    parents = _parse_edges(raw_edges, raw_nodes)
    nodes: list[Node] = []
    for index, raw in enumerate(raw_nodes):
        node = _parse_node(raw, index, parents, known_classes)
        nodes.append(node)
    kept = {key: document[key] for key in ("nodes", "edges", *META_KEYS) if key in document}
    return nodes, TypedGraph(templating.encode_json(kept))


def _check_meta(document: Mapping[str, Any]) -> None:
    tags = document.get("tags", [])
    if tags is not None and (not isinstance(tags, list)
                             or not all(isinstance(tag, str) for tag in tags)):
        raise InvalidArgument("tags must be a list of strings")
    for key in ("tenant", "version"):
        value = document.get(key, "")
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{key} must be a string, got {json_type_name(value)}")


def _parse_edges(raw_edges: list[Any], raw_nodes: list[Any]) -> dict[str, set[str]]:
    node_ids = {raw.get("id") for raw in raw_nodes if isinstance(raw, dict)}
    parents: dict[str, set[str]] = {}
    seen: set[str] = set()
    for index, edge in enumerate(raw_edges):
        where = f"edges[{index}]"
        if not isinstance(edge, dict):
            raise InvalidArgument(f"{where} must be an object {{\"source\", \"target\"}}")
        unknown = sorted(set(edge) - EDGE_KEYS)
        if unknown:
            raise InvalidArgument(f"{where} has unknown keys: {', '.join(unknown)} (allowed: "
                                  f"{', '.join(sorted(EDGE_KEYS))})")
        edge_id = edge.get("id")
        if edge_id is not None:
            if not isinstance(edge_id, str) or not edge_id:
                raise InvalidArgument(f"{where}.id must be a non-empty string")
            if edge_id in seen:
                raise InvalidArgument(f"{where}.id: duplicate edge id '{edge_id[:80]}'")
            seen.add(edge_id)
            where = f"edge '{edge_id[:80]}'"
        for key in ("kind", "label"):
            if not isinstance(edge.get(key, ""), str):
                raise InvalidArgument(f"{where}.{key} must be a string")
        if edge.get("kind", "") not in EDGE_KINDS:
            raise InvalidArgument(f"{where}.kind must be data, control or reward, got "
                                  f"{str(edge.get('kind'))[:40]!r}")
        ends = []
        for end in ("source", "target"):
            value = edge.get(end)
            if not isinstance(value, str) or not value:
                raise InvalidArgument(f"{where}.{end} is required: a node id")
            if value not in node_ids:
                raise InvalidArgument(f"{where}.{end} names unknown node '{value[:80]}'")
            ends.append(value)
        if ends[0] == ends[1]:
            raise InvalidArgument(f"{where} goes from node '{ends[0]}' to itself")
        parents.setdefault(ends[1], set()).add(ends[0])
    return parents


def _parse_node(raw: Any, index: int, parents: Mapping[str, set[str]],
                known_classes: Collection[str] | None) -> Node:
    where = f"nodes[{index}]"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object, got {json_type_name(raw)}")
    node_id = raw.get("id")
    if not isinstance(node_id, str) or not node_id:
        raise InvalidArgument(f"{where}.id is required: a non-empty string")
    where = f"node '{node_id[:80]}'"
    unknown = sorted(set(raw) - NODE_KEYS)
    if unknown:
        raise InvalidArgument(f"{where} has unknown keys: {', '.join(unknown)} (allowed: "
                              f"{', '.join(sorted(NODE_KEYS))})")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise InvalidArgument(f"{where}.{key} must be a string")
    position = raw.get("position")
    if position is not None and not isinstance(position, dict):
        raise InvalidArgument(f"{where}.position must be an object {{\"x\", \"y\"}}")
    node_type = raw.get("type")
    if node_type not in NODE_TYPES:
        raise InvalidArgument(f"{where}.type must be one of {', '.join(NODE_TYPES)}, got "
                              f"{str(node_type)[:40]!r}")
    for other in NODE_TYPES:
        if other != node_type and raw.get(other) is not None:
            raise InvalidArgument(f"{where} is a {node_type} node but has a {other} config")
    config = raw.get(node_type)
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidArgument(
            f"{where}.{node_type} must be an object, got {json_type_name(config)}")
    _check_config(config, node_type, f"{where}.{node_type}")
    task_class = step_class(node_type, config)
    if task_class and known_classes is not None and task_class not in known_classes:
        known = ", ".join(sorted(known_classes))
        raise InvalidArgument(f"{where}: a {node_type} node runs in class '{task_class}', "
                              f"which is not configured (known: {known})")
    timeout = int(config.get("timeout_sec") or 0) if node_type == "verifier" else 0
    if not 0 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(f"{where}.verifier.timeout_sec must be from 0 to "
                              f"{MAX_TIMEOUT_SECONDS}")
    return Node(node_id, node_type, task_class, config,
                tuple(sorted(parents.get(node_id, ()))), timeout)


def _check_config(config: Mapping[str, Any], node_type: str, where: str) -> None:
    if node_type == "custom" and not config:
        raise InvalidArgument(f"{where} must be a non-empty object")
    for name, kind, required in CONFIG_FIELDS[node_type]:
        value = config.get(name)
        if value is None or value == "":
            if required:
                raise InvalidArgument(f"{where}.{name} is required")
            continue
        if not _is(value, kind):
            raise InvalidArgument(
                f"{where}.{name} must be {_KIND_TEXT[kind]}, got {json_type_name(value)}")
    if node_type == "verifier":
        weight = config.get("weight")
        if isinstance(weight, int | float) and weight < 0:
            raise InvalidArgument(f"{where}.weight must be 0 or more, got {weight}")


_KIND_TEXT = {_STR: "a string", _NUM: "a number", _INT: "a whole number", _BOOL: "a boolean",
              _STRS: "a list of strings",
              _CMD: "a command (text, or a non-empty list of strings)"}


def _is(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _NUM:
        return isinstance(value, int | float)
    if kind == _INT:
        return isinstance(value, int) and value >= 0
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    # _CMD
    if isinstance(value, str):
        return bool(value.strip())
    return (isinstance(value, list) and bool(value)
            and all(isinstance(item, str) for item in value))


