"""Step payload templates: references for validation, rendering, escapes, missing values."""

from __future__ import annotations

import json

import pytest
from agent_infra.orchestrator.workflows.templating import (
    RenderContext,
    StepView,
    TemplateError,
    references,
    render,
    render_payload,
)
from agent_infra.runtime.errors import InvalidArgument

CONTEXT = RenderContext(
    run_id="run-abc",
    workflow_id="etl",
    input={"name": "world", "dotted.key": "d", "quote": 'say "hi"\n'},
    steps={"fetch": StepView("completed", {"out": "42", "stdout": "a\tb"})},
)


@pytest.mark.parametrize(("text", "expected"), [
    ("", set()),
    ("no tags } here }}", set()),
    ("{{ input.name }}", {("input", "name")}),
    ("{{input.name}}{{   input.dotted.key   }}", {("input", "name"), ("input", "dotted.key")}),
    ("{{ steps.fetch.result.out }}", {("steps", "fetch", "result", "out")}),
    ("{{ steps.fetch.result.a.b-c:d }}", {("steps", "fetch", "result", "a.b-c:d")}),
    ("{{ steps.fetch.status }}", {("steps", "fetch", "status")}),
    ("{{ run.id }}-{{ workflow.id }}", {("run", "id"), ("workflow", "id")}),
    ("{{ '{{' }}", set()),
    ("{{\n input.name\n}}", {("input", "name")}),
])
def test_references(text: str, expected: set[tuple[str, ...]]) -> None:
    assert references(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("{{ input }}", "unknown template expression {{ input }}"),
    ("{{ input. }}", "unknown template expression"),
    ("{{ input.has space }}", "unknown template expression"),
    ("{{ steps.fetch }}", "unknown template expression"),
    ("{{ steps.fetch.result }}", "unknown template expression"),
    ("{{ steps.fetch.outputs.x }}", "unknown template expression"),
    ("{{ steps.bad.id.status }}", "unknown template expression"),
    ("{{ run.name }}", "unknown template expression"),
    ("{{ Input.name }}", "unknown template expression"),
    ("{{ '}}' }}", "unknown template expression"),
    ("{{}}", "unknown template expression {{}}"),
    ("{{ input.name", "'{{' at character 1 has no closing '}}'"),
    ("ok {{ input.name }} then {{ oops", "'{{' at character 26 has no closing '}}'"),
])
def test_malformed(text: str, expected: str) -> None:
    with pytest.raises(TemplateError) as caught:
        references(text)
    assert expected in str(caught.value)
    assert isinstance(caught.value, InvalidArgument)  # reaches a caller as INVALID_ARGUMENT
    with pytest.raises(TemplateError):
        render(text, CONTEXT)


def test_error_lists_the_syntax() -> None:
    with pytest.raises(TemplateError, match=r"use input\.NAME, steps\.STEP\.result\.KEY"):
        render("{{ x }}", CONTEXT)


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"),
    ("Hello {{ input.name }}!", "Hello world!"),
    ("{{input.name}}{{input.name}}", "worldworld"),
    ("{{ input.dotted.key }}", "d"),
    ("{{ steps.fetch.result.out }}", "42"),
    ("{{ steps.fetch.status }}", "completed"),
    ("{{ run.id }}/{{ workflow.id }}", "run-abc/etl"),
    ("{{ '{{' }} input.name }}", "{{ input.name }}"),
    ("{{'{{'}}", "{{"),
    ("a }} b", "a }} b"),
    ("{ {{ input.name }} }", "{ world }"),
])
def test_render(text: str, expected: str) -> None:
    assert render(text, CONTEXT) == expected


def test_rendered_values_are_not_rendered_again() -> None:
    context = RenderContext("r", "w", {"evil": "{{ input.secret }}", "secret": "s"}, {})
    assert render("{{ input.evil }}", context) == "{{ input.secret }}"


def test_missing_input_names_the_key_and_what_exists() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ input.nope }}", CONTEXT)
    assert str(caught.value) == (
        "input 'nope' is not set; the run's input has: dotted.key, name, quote")
    empty = RenderContext("r", "w", {}, {})
    with pytest.raises(TemplateError, match=r"the run's input has: \(nothing\)"):
        render("{{ input.nope }}", empty)


def test_missing_result_key_names_step_and_key() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ steps.fetch.result.missing }}", CONTEXT)
    assert str(caught.value) == "step 'fetch' result has no key 'missing'; it has: out, stdout"


def test_missing_step_named() -> None:
    with pytest.raises(TemplateError, match="step 'other' has no outcome yet"):
        render("{{ steps.other.status }}", CONTEXT)


def test_render_payload_plain_and_json_values() -> None:
    payload = {
        "greeting": "hi {{ input.name }}",
        "cmd": json.dumps(["echo", "{{ input.quote }}", 3, {"k": "{{ steps.fetch.result.stdout }}",
                                                             "{{ input.name }}": True}]),
    }
    rendered = render_payload(payload, {"cmd"}, CONTEXT)
    assert rendered["greeting"] == "hi world"
    # The substituted value stays a valid, correctly escaped JSON string.
    assert json.loads(rendered["cmd"]) == [
        "echo", 'say "hi"\n', 3, {"k": "a\tb", "{{ input.name }}": True}]


def test_render_payload_error_names_the_key() -> None:
    with pytest.raises(TemplateError) as caught:
        render_payload({"ok": "x", "bad": "{{ input.nope }}"}, set(), CONTEXT)
    assert str(caught.value).startswith("payload 'bad': input 'nope' is not set")
    with pytest.raises(TemplateError, match="payload 'j': step 'fetch' result has no key 'z'"):
        render_payload({"j": '["{{ steps.fetch.result.z }}"]'}, {"j"}, CONTEXT)


def test_structured_output_of_a_step() -> None:
    """{{ steps.X.output.KEY }} reads the step's __DSPY_RESULT__ object (runner_output)."""
    assert references("{{ steps.fetch.output.score }}") == {("steps", "fetch", "output", "score")}
    context = RenderContext(run_id="r", workflow_id="w", input={}, steps={"fetch": StepView(
        "completed", {"runner_output": '{"score": 0.93, "label": "good", "tags": ["a"]}'})})
    assert render("{{ steps.fetch.output.label }}:{{ steps.fetch.output.score }}",
                  context) == "good:0.93"
    assert render("{{ steps.fetch.output.tags | raw }}", context) == '["a"]'
    with pytest.raises(TemplateError, match="output has no key 'nope'; it has: label, score"):
        render("{{ steps.fetch.output.nope }}", context)
    with pytest.raises(TemplateError, match="has no structured output"):
        render("{{ steps.fetch.output.x }}", CONTEXT)
