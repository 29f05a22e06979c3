"""Issue 10, findings 1 and 5: templates render without deep recursion, and values substituted
into a text command (run by /bin/sh -c) are shell-quoted unless the tag says `| raw`."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from agent_infra.orchestrator.workflows import templating
from agent_infra.orchestrator.workflows.spec import parse_spec
from agent_infra.orchestrator.workflows.templating import (
    RenderContext,
    StepView,
    TemplateError,
    references,
    render_payload,
)
from agent_infra.runtime.errors import InvalidArgument

EVIL = "x; echo INJECTED $(id -u)"
CONTEXT = RenderContext(run_id="run-1", workflow_id="wf", input={"word": "it's"},
                        steps={"a": StepView("completed", {"stdout": EVIL})})


def test_text_command_values_are_shell_quoted() -> None:
    out = render_payload({"command": "echo {{ steps.a.result.stdout }}"}, (), CONTEXT)
    assert out["command"] == f"echo {shlex.quote(EVIL)}"
    ran = subprocess.run(["/bin/sh", "-c", out["command"]], capture_output=True, text=True,
                         check=True)
    assert ran.stdout == EVIL + "\n"


def test_raw_filter_substitutes_as_is() -> None:
    out = render_payload({"command": "echo {{ steps.a.result.stdout | raw }}"}, (), CONTEXT)
    assert out["command"] == f"echo {EVIL}"


def test_quote_filter_quotes_outside_commands_too() -> None:
    out = render_payload({"note": "{{ input.word | quote }} {{ input.word }}"}, (), CONTEXT)
    assert out["note"] == f"{shlex.quote(CONTEXT.input['word'])} it's"


def test_argv_commands_are_not_quoted() -> None:
    as_json = render_payload({"command": json.dumps(["echo", "{{ steps.a.result.stdout }}"])},
                             {"command"}, CONTEXT)
    assert json.loads(as_json["command"]) == ["echo", EVIL]
    as_text = render_payload({"command": '["echo", "{{ steps.a.result.stdout }}"]'}, (),
                             CONTEXT)
    assert json.loads(as_text["command"]) == ["echo", EVIL]


def test_unknown_filter_is_refused_and_references_ignore_filters() -> None:
    assert references("{{ input.x | raw }}") == {("input", "x")}
    with pytest.raises(TemplateError, match="unknown template filter"):
        references("{{ input.x | upper }}")


def test_deep_values_render_without_recursion() -> None:
    # Beyond what the spec parser accepts, to show rendering itself has no depth limit.
    deep: object = "{{ input.word }}"
    for _ in range(5000):
        deep = [deep]
    out = templating._render_json(deep, CONTEXT)
    for _ in range(5000):
        assert isinstance(out, list)
        out = out[0]
    assert out == "it's"
    assert list(templating.json_strings(deep)) == ["{{ input.word }}"]


def test_900_deep_spec_is_invalid_argument_naming_the_limit() -> None:
    spec = ('{"steps": [{"id": "a", "payload": {"x": ' + "[" * 900 + "]" * 900 + "}}]}")
    with pytest.raises(InvalidArgument, match="904 deep; the limit is 64"):
        parse_spec(spec, None)


@pytest.mark.parametrize("number", ["9" * 5000, "1e400"])
def test_huge_numbers_in_specs_are_invalid_argument(number: str) -> None:
    with pytest.raises(InvalidArgument, match="spec"):
        parse_spec('{"steps": [{"id": "a", "payload": {"x": ' + number + "}}]}", None)


HOSTILE = ["x; echo INJECTED $(id -u)", "a'b\"c", "';id;'", '";id;"', "$(id)`id`\\", "line\nnext",
           "", " spaced  out ", "\\"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("command", "printed"), [
    ("printf '%s|' {{ input.v }}", "{}"),
    ("printf '%s|' '{{ input.v }}'", "{}"),
    ("printf '%s|' \"{{ input.v }}\"", "{}"),
    ("printf '%s|' pre{{ input.v }}post", "pre{}post"),
    ("printf '%s|' \\{{ input.v }}", "{}"),
    ("printf '%s|' \"a\\\"{{ input.v }}\"", 'a"{}'),
    ("printf '%s|' 'it''s:{{ input.v }}'", "its:{}"),
])
def test_values_arrive_literally_wherever_the_tag_stands(command: str, printed: str,
                                                         value: str) -> None:
    context = RenderContext(run_id="r", workflow_id="w", input={"v": value}, steps={})
    rendered = render_payload({"command": command}, (), context)["command"]
    ran = subprocess.run(["/bin/sh", "-c", rendered], capture_output=True, text=True, check=True)
    assert ran.stdout == printed.replace("{}", value) + "|", rendered
