"""Workflow specs: both shapes, every validation error, the graph helpers, canonical equality."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agent_infra.orchestrator.workflows.spec import (
    MAX_SPEC_BYTES,
    StepSpec,
    WorkflowSpec,
    parse_spec,
    validate_workflow_id,
)
from agent_infra.runtime.errors import InvalidArgument, ResourceExhausted

CLASSES = frozenset({"cpu_short", "cpu_long", "gpu"})


def parse(document: Any) -> WorkflowSpec:
    return parse_spec(json.dumps(document).encode(), CLASSES)


def invalid(document: Any) -> str:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(InvalidArgument) as caught:
        parse_spec(data, CLASSES)
    return str(caught.value)


DIAMOND_STEPS = {"steps": [
    {"id": "fetch", "class": "cpu_short", "payload": {"url": "{{ input.url }}"}},
    {"id": "left", "depends_on": ["fetch"], "payload": {"n": 1}},
    {"id": "right", "depends_on": ["fetch"], "retries": 2, "timeout_seconds": 60,
     "priority": 5, "class": "gpu"},
    {"id": "join", "depends_on": ["left", "right"],
     "payload": {"args": ["{{ steps.left.result.out }}", {"k": "{{ steps.fetch.status }}"}]}},
]}
DIAMOND_NODES = {
    "nodes": [
        {"id": "join", "payload": {
            "args": ["{{ steps.left.result.out }}", {"k": "{{ steps.fetch.status }}"}]}},
        {"id": "right", "retries": 2, "timeout_seconds": 60, "priority": 5, "class": "gpu"},
        {"id": "left", "payload": {"n": 1}},
        {"id": "fetch", "class": "cpu_short", "payload": {"url": "{{ input.url }}"}},
    ],
    "edges": [{"from": "fetch", "to": "left"}, {"from": "fetch", "to": "right"},
              {"from": "left", "to": "join"}, {"from": "right", "to": "join"}],
}


# ----------------------------------------------------------------------------- shapes


def test_steps_shape_fields() -> None:
    spec = parse(DIAMOND_STEPS)
    assert spec.ids == ("fetch", "join", "left", "right")
    right = spec.step("right")
    assert right == StepSpec("right", "gpu", {}, ("fetch",), max_attempts=3, timeout_seconds=60,
                             priority=5)
    fetch = spec.step("fetch")
    assert fetch.payload == {"url": "{{ input.url }}"}
    assert fetch.max_attempts == 0 and fetch.timeout_seconds == 0 and fetch.priority == 0


def test_defaults() -> None:
    step = parse({"steps": [{"id": "only"}]}).step("only")
    assert step == StepSpec("only", "cpu_short", {}, (), 0, 0, 0)
    assert parse({"steps": [{"id": "a", "retries": 0}]}).step("a").max_attempts == 1


def test_non_string_payload_values_are_json_encoded() -> None:
    spec = parse(DIAMOND_STEPS)
    assert spec.step("left").payload == {"n": "1"}
    assert spec.step("left").json_keys == frozenset({"n"})
    join = spec.step("join")
    assert json.loads(join.payload["args"]) == [
        "{{ steps.left.result.out }}", {"k": "{{ steps.fetch.status }}"}]
    payload = parse({"steps": [{"id": "a", "payload": {
        "s": "plain", "t": True, "z": None, "f": 1.5, "o": {"b": 1, "a": [2]}}}]}).step("a")
    assert payload.payload == {"s": "plain", "t": "true", "z": "null", "f": "1.5",
                               "o": '{"a":[2],"b":1}'}
    assert payload.json_keys == frozenset({"t", "z", "f", "o"})


def test_nodes_and_edges_equal_steps() -> None:
    assert parse(DIAMOND_NODES) == parse(DIAMOND_STEPS)
    assert parse(DIAMOND_NODES).canonical_json() == parse(DIAMOND_STEPS).canonical_json()


def test_nodes_may_also_use_depends_on_and_edges_are_optional() -> None:
    spec = parse({"nodes": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}, {"id": "c"}],
                  "edges": [{"from": "c", "to": "b"}, {"from": "a", "to": "b"}]})
    assert spec.parents("b") == ("a", "c")
    assert parse({"nodes": [{"id": "a"}]}).roots() == ("a",)


def test_str_input_and_bom_accepted() -> None:
    assert parse_spec('{"steps": [{"id": "a"}]}', CLASSES).ids == ("a",)
    assert parse_spec(b'\xef\xbb\xbf{"steps": [{"id": "a"}]}', CLASSES).ids == ("a",)


def test_known_classes_none_accepts_any_class() -> None:
    assert parse_spec(b'{"steps": [{"id": "a", "class": "gone"}]}', None).step("a").task_class \
        == "gone"


def test_default_class_can_be_chosen() -> None:
    spec = parse_spec(b'{"steps": [{"id": "a"}]}', CLASSES, default_class="gpu")
    assert spec.step("a").task_class == "gpu"


# ----------------------------------------------------------------------------- graph helpers


def test_graph_helpers() -> None:
    spec = parse(DIAMOND_STEPS)
    assert spec.order() == ("fetch", "left", "right", "join")
    assert spec.roots() == ("fetch",)
    assert spec.leaves() == ("join",)
    assert spec.children("fetch") == ("left", "right")
    assert spec.children("join") == ()
    assert spec.parents("join") == ("left", "right")
    assert spec.descendants("fetch") == {"left", "right", "join"}
    assert spec.descendants("left") == {"join"}
    assert spec.descendants("join") == frozenset()
    assert spec.ancestors("join") == {"fetch", "left", "right"}
    assert spec.input_names() == {"url"}


def test_order_is_topological_with_id_ties() -> None:
    spec = parse({"steps": [{"id": "z"}, {"id": "b", "depends_on": ["z"]}, {"id": "a"},
                            {"id": "c", "depends_on": ["a", "b"]}]})
    assert spec.order() == ("a", "z", "b", "c")
    assert spec.roots() == ("a", "z")


def test_long_chain_has_no_recursion_problem() -> None:
    steps = [{"id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(1000)]
    spec = parse({"steps": steps})
    assert spec.order()[0] == "s0" and spec.order()[-1] == "s999"
    assert len(spec.descendants("s0")) == 999
    steps[0]["depends_on"] = ["s999"]
    assert "dependency cycle: s0 -> s1 -> " in invalid({"steps": steps})


# ----------------------------------------------------------------------------- canonical form


def test_canonical_ignores_formatting_key_order_step_order_and_dependency_order() -> None:
    a = b'{"steps": [{"id": "a", "payload": {"x": 1, "y": "2"}}, {"id": "b", "depends_on": ["a", "c"]}, {"id": "c"}]}'  # noqa: E501
    b = b"""{
      "steps": [
        {"depends_on": ["c", "a", "a"], "id": "b"},
        {"id": "c", "class": "cpu_short", "priority": 0},
        {"payload": {"y": "2", "x": 1}, "id": "a"}
      ]
    }"""
    assert parse_spec(a, CLASSES).canonical_json() == parse_spec(b, CLASSES).canonical_json()
    assert parse_spec(a, CLASSES) == parse_spec(b, CLASSES)


@pytest.mark.parametrize("change", [
    {"id": "a", "payload": {"x": "1"}},  # the string "1" is not the number 1
    {"id": "a", "payload": {"x": 1}, "retries": 0},  # 0 retries is not the class default
    {"id": "a", "payload": {"x": 1}, "timeout_seconds": 5},
    {"id": "a", "payload": {"x": 1}, "priority": 1},
    {"id": "a", "payload": {"x": 1}, "class": "gpu"},
    {"id": "a", "payload": {"x": 1, "y": ""}},
])
def test_canonical_differs_when_meaning_differs(change: dict[str, Any]) -> None:
    base = parse({"steps": [{"id": "a", "payload": {"x": 1}}]})
    assert parse({"steps": [change]}).canonical_json() != base.canonical_json()


def test_canonical_round_trips() -> None:
    for document in (DIAMOND_STEPS, DIAMOND_NODES):
        spec = parse(document)
        again = parse_spec(spec.canonical_json(), CLASSES)
        assert again == spec
        assert again.canonical_json() == spec.canonical_json()
        assert {s.id: s.json_keys for s in again.steps} == {s.id: s.json_keys for s in spec.steps}


def test_canonical_keeps_unicode_readable() -> None:
    spec = parse({"steps": [{"id": "a", "payload": {"msg": "héllo ✓"}}]})
    assert "héllo ✓" in spec.canonical_json()


# ----------------------------------------------------------------------------- errors


def test_invalid_json_names_line_and_column() -> None:
    message = invalid(b'{\n  "steps": [\n    {"id": "a",}\n  ]\n}')
    assert message.startswith("spec is not valid JSON: line 3 column 16: ")
    assert "Expecting property name enclosed in double quotes" in message


def test_empty_and_non_utf8_and_constants() -> None:
    assert "spec is empty" in invalid(b"  ")
    assert "not UTF-8" in invalid(b'{"steps": [{"id": "\xff"}]}')
    assert "NaN" in invalid(b'{"steps": [{"id": "a", "priority": NaN}]}')
    assert "key 'id' twice" in invalid(b'{"steps": [{"id": "a", "id": "b"}]}')


def test_too_large() -> None:
    with pytest.raises(ResourceExhausted, match="limit is"):
        parse_spec(b" " * (MAX_SPEC_BYTES + 1), CLASSES)


@pytest.mark.parametrize(("document", "expected"), [
    ([], "must be a JSON object"),
    ("steps", "got a string"),
    ({}, 'spec has no "steps"'),
    ({"steps": None}, 'spec has no "steps"'),
    ({"steps": {}}, '"steps" must be a list, got an object'),
    ({"steps": []}, '"steps" is empty'),
    ({"nodes": []}, '"nodes" is empty'),
    ({"edges": []}, 'spec has no "nodes"'),
    ({"steps": [{"id": "a"}], "nodes": []}, "both"),
    ({"steps": [{"id": "a"}], "name": "x", "zeta": 1}, "unknown keys: name, zeta"),
    ({"nodes": [{"id": "a"}], "extra": 1}, "unknown keys: extra (allowed: edges, nodes)"),
])
def test_document_shape_errors(document: Any, expected: str) -> None:
    assert expected in invalid(document)


@pytest.mark.parametrize(("step", "expected"), [
    ("a", "steps[0] must be an object, got a string"),
    ({}, "steps[0].id is missing"),
    ({"id": ""}, "steps[0].id is ''"),
    ({"id": 7}, "steps[0].id is 7"),
    ({"id": "a b"}, "steps[0].id is 'a b': a step id is 1-64 letters, digits, '-' or '_'"),
    ({"id": "a.b"}, "steps[0].id is 'a.b'"),
    ({"id": "a\n"}, "steps[0].id is 'a\\n'"),
    ({"id": "x" * 65}, "steps[0].id is"),
    ({"id": "a", "retry": 1, "cmd": "x"}, "step 'a' has unknown keys: cmd, retry (allowed: "),
    ({"id": "a", "class": "huge"},
     "step 'a': unknown class 'huge'; known classes: cpu_long, cpu_short, gpu"),
    ({"id": "a", "class": 3}, "step 'a': class must be a string"),
    ({"id": "a", "retries": -1}, "step 'a': retries must be an integer from 0 to 100, got -1"),
    ({"id": "a", "retries": 101}, "retries must be an integer from 0 to 100, got 101"),
    ({"id": "a", "retries": 1.5}, "got 1.5"),
    ({"id": "a", "retries": True}, "retries must be an integer from 0 to 100, got true"),
    ({"id": "a", "retries": "2"}, 'got "2"'),
    ({"id": "a", "timeout_seconds": -5}, "timeout_seconds must be an integer from 0 to 604800"),
    ({"id": "a", "timeout_seconds": 604801}, "got 604801"),
    ({"id": "a", "priority": 2**31}, "priority must be an integer from -2147483648 to 2147483647"),
    ({"id": "a", "payload": []}, "step 'a': payload must be an object, got an array"),
    ({"id": "a", "payload": {"": "x"}}, "payload keys must be 1-256 characters"),
    ({"id": "a", "depends_on": "b"}, "depends_on must be a list of step ids"),
    ({"id": "a", "depends_on": [1]}, "depends_on must be a list of step ids"),
])
def test_step_errors(step: Any, expected: str) -> None:
    assert expected in invalid({"steps": [step]})


def test_duplicate_ids_named() -> None:
    message = invalid({"steps": [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": "b"}, {"id": "c"}]})
    assert message == "duplicate step ids: a, b (each id must be unique)"


def test_unknown_dependency_names_step_and_dependency() -> None:
    assert invalid({"steps": [{"id": "a"}, {"id": "b", "depends_on": ["a", "ghost"]}]}) == \
        "step 'b' depends on unknown step 'ghost'"


@pytest.mark.parametrize(("steps", "cycle"), [
    ([{"id": "a", "depends_on": ["a"]}], "a -> a"),
    ([{"id": "a", "depends_on": ["b"]}, {"id": "b", "depends_on": ["a"]}], "a -> b -> a"),
    ([{"id": "r"}, {"id": "a", "depends_on": ["r", "c"]}, {"id": "b", "depends_on": ["a"]},
      {"id": "c", "depends_on": ["b"]}], "a -> b -> c -> a"),
])
def test_cycles_named(steps: list[dict[str, Any]], cycle: str) -> None:
    assert invalid({"steps": steps}) == (
        f"dependency cycle: {cycle} (each step depends on the one before it)")


def test_cycle_through_edges() -> None:
    message = invalid({"nodes": [{"id": "x"}, {"id": "y"}],
                       "edges": [{"from": "x", "to": "y"}, {"from": "y", "to": "x"}]})
    assert "dependency cycle: x -> y -> x" in message


@pytest.mark.parametrize(("edges", "expected"), [
    ({}, '"edges" must be a list, got an object'),
    (["a"], "edges[0] must be an object"),
    ([{"from": "a"}], "edges[0].to must be a step id"),
    ([{"from": "a", "to": 3}], "edges[0].to must be a step id"),
    ([{"from": "a", "to": "b", "weight": 1}], "edges[0] has unknown keys: weight"),
    ([{"from": "a", "to": "b"}, {"from": "nope", "to": "b"}],
     "edges[1].from names unknown step 'nope'"),
])
def test_edge_errors(edges: Any, expected: str) -> None:
    assert expected in invalid({"nodes": [{"id": "a"}, {"id": "b"}], "edges": edges})


def test_node_errors_say_nodes() -> None:
    assert "nodes[1].id is missing" in invalid({"nodes": [{"id": "a"}, {}]})


@pytest.mark.parametrize(("payload_value", "expected"), [
    ("{{ input.x", "step 'a' payload 'p': '{{' at character 1 has no closing '}}'"),
    ("{{ nope }}", "step 'a' payload 'p': unknown template expression {{ nope }}"),
    ("{{ steps.a.result }}", "unknown template expression"),
    (["ok", {"deep": "{{ input.x }} {{ bad }}"}], "step 'a' payload 'p': unknown template"),
    ("{{ steps.ghost.result.k }}", "step 'a' payload 'p' refers to unknown step 'ghost'"),
    ("{{ steps.a.status }}", "refers to step 'a', which is not an ancestor of 'a'"),
    ("{{ steps.sibling.result.k }}",
     "step 'a' payload 'p' refers to step 'sibling', which is not an ancestor of 'a' "
     "(add it to depends_on)"),
])
def test_template_errors(payload_value: Any, expected: str) -> None:
    steps = [{"id": "root"}, {"id": "sibling", "depends_on": ["root"]},
             {"id": "a", "depends_on": ["root"], "payload": {"p": payload_value}}]
    message = invalid({"steps": steps})
    assert expected in message


def test_templates_may_name_any_ancestor() -> None:
    spec = parse({"steps": [
        {"id": "a"}, {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["b"], "payload": {
            "x": "{{ steps.a.result.k }} {{steps.b.status}} {{ run.id }} {{ workflow.id }}",
            "y": "{{ '{{' }} literal"}}]})
    assert spec.step("c").references() == {
        "x": {("steps", "a", "result", "k"), ("steps", "b", "status"), ("run", "id"),
              ("workflow", "id")},
        "y": set()}


def test_object_keys_are_not_templates() -> None:
    spec = parse({"steps": [{"id": "a", "payload": {"p": {"{{ weird": "x"}}}]})
    assert spec.step("a").references() == {"p": set()}


def test_workflow_id_rules() -> None:
    validate_workflow_id("etl.daily:v2_x-1")
    with pytest.raises(InvalidArgument, match="workflow id is required"):
        validate_workflow_id("")
    with pytest.raises(InvalidArgument, match="1-128 letters"):
        validate_workflow_id("../etc/passwd")
    with pytest.raises(InvalidArgument, match="1-128 letters"):
        validate_workflow_id("x" * 129)
    with pytest.raises(InvalidArgument, match="1-128 letters"):
        validate_workflow_id("etl\n")
