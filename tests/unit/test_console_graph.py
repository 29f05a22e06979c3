"""The console's workflow graph layout (console/graph.py): pure, deterministic, bounded."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from agent_infra.orchestrator.console import graph
from agent_infra.orchestrator.workflows.spec import MAX_STEPS, parse_document, parse_spec

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "composer_workflow.json"
CLASSES = {"cpu_short", "gpu", "gpu_slurm"}


def composer() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(FIXTURE.read_text())
    return document


def positions(layout: graph.GraphLayout) -> dict[str, tuple[int, int]]:
    return {node.id: (node.layer, node.row) for node in layout.nodes}


def test_typed_graph_is_laid_out_left_to_right_by_depth() -> None:
    _, spec = parse_document(json.dumps(composer()), CLASSES)
    layout = graph.layout(spec)
    assert positions(layout) == {
        "answer": (0, 0), "lint": (0, 1),
        "check": (1, 0), "note": (1, 1),
        "score": (2, 0), "ship": (2, 1),
    }
    nodes = {node.id: node for node in layout.nodes}
    assert nodes["answer"].label == "Answer the question" and nodes["answer"].kind == "signature"
    assert nodes["score"].task_class == "" and nodes["check"].task_class == "cpu_short"
    assert nodes["ship"].label == "Deploy" and nodes["note"].kind == "custom"
    # Left to right, top to bottom, no two nodes on one spot.
    assert nodes["answer"].x < nodes["check"].x < nodes["score"].x
    assert nodes["answer"].y < nodes["lint"].y
    assert len({(node.x, node.y) for node in layout.nodes}) == len(layout.nodes)
    assert all(node.x >= 0 and node.x + graph.NODE_WIDTH <= layout.width
               and node.y + graph.NODE_HEIGHT <= layout.height for node in layout.nodes)
    edges = {(edge.source, edge.target): edge for edge in layout.edges}
    assert set(edges) == {("answer", "check"), ("check", "score"), ("check", "ship"),
                          ("lint", "note")}
    assert (edges[("check", "ship")].kind, edges[("check", "ship")].label) == ("control",
                                                                               "on pass")
    assert edges[("answer", "check")].path.startswith(
        f"M{nodes['answer'].x + graph.NODE_WIDTH},")
    assert layout.layers == 3 and layout.hidden == 0


def test_steps_form_uses_longest_path_and_its_own_edges() -> None:
    spec = parse_spec(json.dumps({"steps": [
        {"id": "fetch"}, {"id": "parse", "depends_on": ["fetch"]},
        {"id": "report", "depends_on": ["fetch", "parse"]}, {"id": "alone"}]}), CLASSES)
    layout = graph.layout(spec)
    found = positions(layout)
    # report waits for parse, so it sits after it, not beside it.
    assert found["fetch"][0] == 0 and found["parse"][0] == 1 and found["report"][0] == 2
    assert found["alone"] == (0, 0) and found["fetch"] == (0, 1)  # ids break ties
    assert {node.kind for node in layout.nodes} == {"task"}
    assert {(edge.source, edge.target, edge.kind) for edge in layout.edges} == {
        ("fetch", "parse", ""), ("fetch", "report", ""), ("parse", "report", "")}


def test_same_graph_in_any_order_gives_the_same_picture() -> None:
    document = composer()
    first = graph.layout(parse_document(json.dumps(document), CLASSES)[1])
    shuffler = random.Random(7)
    for _ in range(5):
        document = composer()
        shuffler.shuffle(document["nodes"])
        shuffler.shuffle(document["edges"])
        again = graph.layout(parse_document(json.dumps(document), CLASSES)[1])
        assert again == first


def test_children_sit_near_their_parents() -> None:
    # b's child is listed first by id but must follow b's row, not come first.
    spec = parse_spec(json.dumps({"steps": [
        {"id": "a"}, {"id": "b"}, {"id": "z_child_of_a", "depends_on": ["a"]},
        {"id": "a_child_of_b", "depends_on": ["b"]}]}), CLASSES)
    found = positions(graph.layout(spec))
    assert found["z_child_of_a"] == (1, 0) and found["a_child_of_b"] == (1, 1)


def test_repeated_typed_edge_is_drawn_once_and_long_labels_are_cut() -> None:
    document = {"nodes": [
        {"id": "a", "type": "custom", "name": "x" * 200, "custom": {"k": 1}},
        {"id": "b", "type": "custom", "custom": {"k": 2}}],
        "edges": [{"id": "e1", "source": "a", "target": "b", "kind": "data", "label": "one"},
                  {"id": "e2", "source": "a", "target": "b", "kind": "control"}]}
    layout = graph.layout(parse_spec(json.dumps(document), CLASSES))
    assert [(edge.kind, edge.label) for edge in layout.edges] == [("data", "one")]
    label = layout.nodes[0].label
    assert len(label) == graph.MAX_LABEL_CHARS and label.endswith("\u2026")
    assert layout.nodes[1].label == "b"  # no name: the id


def test_big_graph_is_bounded_and_quick() -> None:
    # The largest spec: a chain of MAX_STEPS steps, each also fanned out from the first.
    steps: list[dict[str, Any]] = [{"id": "s0000"}]
    steps += [{"id": f"s{i:04d}", "depends_on": sorted({f"s{i - 1:04d}", "s0000"})}
              for i in range(1, MAX_STEPS)]
    spec = parse_spec(json.dumps({"steps": steps}), CLASSES)
    started = time.perf_counter()
    layout = graph.layout(spec)
    elapsed = time.perf_counter() - started
    assert len(layout.nodes) == graph.MAX_NODES and layout.hidden == MAX_STEPS - graph.MAX_NODES
    assert [node.id for node in layout.nodes] == [f"s{i:04d}" for i in range(graph.MAX_NODES)]
    drawn = {node.id for node in layout.nodes}
    assert all(edge.source in drawn and edge.target in drawn for edge in layout.edges)
    assert elapsed < 2.0, f"layout of {MAX_STEPS} steps took {elapsed:.2f} s"
    small = graph.layout(spec, max_nodes=3)
    assert [node.id for node in small.nodes] == ["s0000", "s0001", "s0002"]
    assert small.width == 2 * graph.MARGIN + 3 * graph.NODE_WIDTH + 2 * graph.GAP_X
