"""A workflow's graph laid out for drawing: pure, deterministic, bounded.

`layout(spec)` places every step (a typed node of the composer's graph, or a step of our steps
form: both are `StepSpec`s) in a column by its dependency depth, left to right: a step with no
parents is in layer 0, any other one layer after its deepest parent (the longest path to it).
Within a layer, rows follow the mean row of a step's parents (so children sit near their
parents), ties broken by id: the same spec always gives the same picture, whatever order its
steps or edges came in.

Edges are the typed graph's own (with their `kind` and `label`), or one per `depends_on` entry
for the steps form; an edge repeated between the same two steps is drawn once.

Bounded: a spec has at most spec.MAX_STEPS steps, and at most `max_nodes` are drawn (the first
ones in layer order, so the start of the graph shows); `hidden` says how many were left out.
The composer's own `position`s are not used: they are the author's, laid out for a canvas, and
our depth layout reads the same for every workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..workflows.spec import WorkflowSpec

MAX_NODES = 400
MAX_LABEL_CHARS = 26
NODE_WIDTH = 210
NODE_HEIGHT = 48
GAP_X = 70
GAP_Y = 22
MARGIN = 16


@dataclass(frozen=True)
class GraphNode:
    id: str
    label: str  # the composer's node name, else the id; shortened to MAX_LABEL_CHARS
    kind: str  # "task" for a step of the steps form, else the typed node's type
    task_class: str  # "" for a node that runs no task
    layer: int  # dependency depth: 0 for a step with no parents
    row: int  # position within its layer, from the top
    x: int  # top-left corner, pixels
    y: int


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    kind: str  # the typed edge's kind (data, control, reward) or ""
    label: str
    path: str  # SVG path data from the source's right side to the target's left side


@dataclass(frozen=True)
class GraphLayout:
    nodes: tuple[GraphNode, ...]  # in (layer, row) order
    edges: tuple[GraphEdge, ...]  # in (source, target) order
    width: int
    height: int
    layers: int
    hidden: int  # steps not drawn (beyond max_nodes)


def depths(spec: WorkflowSpec) -> dict[str, int]:
    """Each step's layer: 0 without parents, else 1 + its deepest parent's."""
    depth: dict[str, int] = {}
    for step_id in spec.order():  # parents before children
        parents = spec.parents(step_id)
        depth[step_id] = 1 + max(depth[parent] for parent in parents) if parents else 0
    return depth


def layout(spec: WorkflowSpec, *, max_nodes: int = MAX_NODES) -> GraphLayout:
    depth = depths(spec)
    layers: dict[int, list[str]] = {}
    for step_id in sorted(depth, key=lambda key: (depth[key], key)):
        layers.setdefault(depth[step_id], []).append(step_id)
    rows: dict[str, int] = {}
    for layer in sorted(layers):
        def weight(step_id: str) -> tuple[float, str]:
            placed = [rows[parent] for parent in spec.parents(step_id) if parent in rows]
            return (sum(placed) / len(placed) if placed else 0.0, step_id)
        for row, step_id in enumerate(sorted(layers[layer], key=weight)):
            rows[step_id] = row
    ordered = sorted(depth, key=lambda key: (depth[key], rows[key]))
    drawn = ordered[:max(max_nodes, 0)]
    names = _typed_names(spec)
    nodes = tuple(_node(spec, step_id, names.get(step_id, ""), depth[step_id], rows[step_id])
                  for step_id in drawn)
    by_id = {node.id: node for node in nodes}
    edges = tuple(GraphEdge(source, target, kind, label[:80],
                            _path(by_id[source], by_id[target]))
                  for (source, target), (kind, label) in sorted(_edges(spec).items())
                  if source in by_id and target in by_id)
    layer_count = 1 + max((node.layer for node in nodes), default=-1)
    tallest = max((node.row for node in nodes), default=-1) + 1
    width = 2 * MARGIN + layer_count * NODE_WIDTH + max(layer_count - 1, 0) * GAP_X
    height = 2 * MARGIN + tallest * NODE_HEIGHT + max(tallest - 1, 0) * GAP_Y
    return GraphLayout(nodes, edges, width, height, layer_count, len(ordered) - len(drawn))


def _node(spec: WorkflowSpec, step_id: str, name: str, layer: int, row: int) -> GraphNode:
    step = spec.step(step_id)
    label = name.strip() or step_id
    if len(label) > MAX_LABEL_CHARS:
        label = label[:MAX_LABEL_CHARS - 1] + "\u2026"
    return GraphNode(step_id, label, step.kind, step.task_class, layer, row,
                     MARGIN + layer * (NODE_WIDTH + GAP_X),
                     MARGIN + row * (NODE_HEIGHT + GAP_Y))


def _typed_names(spec: WorkflowSpec) -> dict[str, str]:
    if spec.graph is None:
        return {}
    names: dict[str, str] = {}
    for node in spec.graph.document.get("nodes", []):
        if isinstance(node, dict) and isinstance(node.get("name"), str):
            names[str(node.get("id"))] = node["name"]
    return names


def _edges(spec: WorkflowSpec) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, target) -> (kind, label): the dependencies, with the typed edges' details."""
    found = {(parent, step.id): ("", "") for step in spec.steps for parent in step.depends_on}
    if spec.graph is not None:
        for edge in reversed(spec.graph.document.get("edges", [])):  # the first one wins
            if isinstance(edge, Mapping) and (edge.get("source"), edge.get("target")) in found:
                found[(str(edge["source"]), str(edge["target"]))] = (
                    _text(edge.get("kind")), _text(edge.get("label")))
    return found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _path(source: GraphNode, target: GraphNode) -> str:
    x1, y1 = source.x + NODE_WIDTH, source.y + NODE_HEIGHT // 2
    x2, y2 = target.x, target.y + NODE_HEIGHT // 2
    bend = max((x2 - x1) // 2, 20)
    return f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
