"""Templates in workflow step payloads: the syntax reference.

A step's payload values may contain tags written ``{{ EXPRESSION }}``; the orchestrator replaces
each tag just before it submits the step's task. Whitespace inside the braces is optional
(``{{input.x}}`` and ``{{  input.x  }}`` are the same). The expressions:

``{{ input.NAME }}``
    The value of ``NAME`` in the run's input map (StartWorkflowRun ``input``).
``{{ steps.STEP.result.KEY }}``
    The value of ``KEY`` in the result map of step ``STEP``. ``STEP`` must be an ancestor of the
    step using it (a parent, or a parent's ancestor): that is checked when the workflow is created,
    so a step never waits on, or reads from, a step that may not have run yet.
``{{ steps.STEP.output.KEY }}``
    The value of ``KEY`` in step ``STEP``'s structured output: the JSON object of its last
    ``__DSPY_RESULT__: {json}`` stdout line (its result's ``runner_output``). A string value is
    substituted as it is, any other value as its JSON text. Same ancestor rule as ``result``.
``{{ steps.STEP.status }}``
    The status of ancestor ``STEP`` (always ``completed`` when the step runs, since a step only
    starts once all its parents completed).
``{{ run.id }}``
    The run's id (``run-`` followed by 32 hex digits).
``{{ workflow.id }}``
    The workflow's id.
``{{ '{{' }}``
    A literal ``{{`` (the only escape; a ``}}`` outside a tag is already literal text).

Filters: a tag may end with ``| raw`` or ``| quote``, as in ``{{ steps.a.result.stdout | raw }}``.

Shell quoting (the default in text commands): a ``command`` payload value written as text (a
string that is not a JSON array) is run by ``/bin/sh -c``, so every value substituted into it is
quoted for the shell and arrives literally, whatever it holds: a step whose stdout is
``x; rm -rf ~`` cannot run commands in the next step. Outside quotes a value becomes one quoted
word (``shlex.quote``); a tag written inside ``'...'`` or ``"..."`` is escaped for those quotes,
so ``echo '{{ steps.a.result.stdout }}'`` prints the value as it is too. ``| raw`` substitutes the
value unquoted, for an operator who means the value to be shell code (and trusts where it comes
from). ``| quote`` quotes anywhere (in any payload value). A ``command`` given as a JSON array
(argv) runs with no shell, so its values are substituted as they are (JSON-escaped), never quoted.

``NAME`` and ``KEY`` are 1 or more letters, digits, ``_``, ``-``, ``.`` or ``:``; a key with other
characters (a space, say) cannot be referenced. ``STEP`` is a step id.

Anything else inside braces, or a ``{{`` without its closing ``}}``, is an error when the workflow
is created (INVALID_ARGUMENT, naming the step, the payload key and the tag).

Payload values that were JSON (a list, an object, a number...) are rendered inside: every string in
them is a template, and the value substituted into a JSON string stays a correctly escaped JSON
string. Object keys are never templates. Plain string values are rendered as text.

Missing values are never silently empty: when the run's input has no ``NAME``, or the step's result
has no ``KEY``, rendering fails with an error naming what is missing, and that fails the step (as a
failed task would: its descendants are skipped and the run fails), never the orchestrator.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from agent_infra.runtime.errors import InvalidArgument

# A reference, as `references` reports it: ("input", NAME), ("steps", STEP, "result", KEY),
# ("steps", STEP, "status"), ("run", "id") or ("workflow", "id").
Reference = tuple[str, ...]

# Non-greedy: a tag ends at the first "}}" after its "{{", so "{{ '{{' }}" is one tag.
_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_KEY = r"[A-Za-z0-9_.:-]+"
_STEP = r"[A-Za-z0-9_-]{1,64}"
_INPUT = re.compile(rf"input\.({_KEY})")
_RESULT = re.compile(rf"steps\.({_STEP})\.result\.({_KEY})")
_STATUS = re.compile(rf"steps\.({_STEP})\.status")
_OUTPUT = re.compile(rf"steps\.({_STEP})\.output\.({_KEY})")
# The result key holding a task's structured output (env-manager's tasks/results.py).
OUTPUT_KEY = "runner_output"
_LITERAL_OPEN = "'{{'"
_FILTERS = ("raw", "quote")
# The payload key whose text value a shell runs (env-manager and Slurm alike).
SHELL_KEY = "command"
_SYNTAX = ("input.NAME, steps.STEP.result.KEY, steps.STEP.output.KEY, steps.STEP.status, "
           "run.id, workflow.id, or '{{' for a literal {{")
_JSON_OPTIONS: dict[str, Any] = {"sort_keys": True, "separators": (",", ":"),
                                 "ensure_ascii": False}


class TemplateError(InvalidArgument):
    """A template is malformed, or names a value the run does not have."""


class _Tag(NamedTuple):
    reference: Reference
    filter: str  # "", "raw" or "quote"


class StepOutcome(Protocol):
    """What rendering reads of a step: a RunStep, or a StepView, fits."""

    @property
    def status(self) -> str: ...

    @property
    def result(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class StepView:
    status: str
    result: Mapping[str, str]


@dataclass(frozen=True)
class RenderContext:
    """Everything a tag can name, for one step of one run."""

    run_id: str
    workflow_id: str
    input: Mapping[str, str]
    steps: Mapping[str, StepOutcome]


def _parse_expression(expression: str) -> _Tag | str:
    """A tag's reference and filter, or (for the escape) the literal text it stands for."""
    text = expression.strip()
    if text == _LITERAL_OPEN:
        return "{{"
    text, bar, filter_name = text.partition("|")
    text, filter_name = text.strip(), filter_name.strip()
    if bar and filter_name not in _FILTERS:
        raise TemplateError(f"unknown template filter {filter_name[:40]!r} in "
                            f"{{{{{expression[:200]}}}}}: use | raw or | quote")
    reference = _parse_reference(text, expression)
    return _Tag(reference, filter_name)


def _parse_reference(text: str, expression: str) -> Reference:
    if text in ("run.id", "workflow.id"):
        return tuple(text.split("."))
    if match := _INPUT.fullmatch(text):
        return ("input", match[1])
    if match := _RESULT.fullmatch(text):
        return ("steps", match[1], "result", match[2])
    if match := _STATUS.fullmatch(text):
        return ("steps", match[1], "status")
    if match := _OUTPUT.fullmatch(text):
        return ("steps", match[1], "output", match[2])
    raise TemplateError(
        f"unknown template expression {{{{{expression[:200]}}}}}: use {_SYNTAX}")


def _segments(text: str) -> Iterator[str | _Tag]:
    """Literal text (str) and references (tuple), in order; raises on malformed tags."""
    position = 0
    for match in _TAG.finditer(text):
        literal = text[position:match.start()]
        _check_literal(literal, position)
        if literal:
            yield literal
        yield _parse_expression(match[1])
        position = match.end()
    rest = text[position:]
    _check_literal(rest, position)
    if rest:
        yield rest


def _check_literal(literal: str, offset: int) -> None:
    opening = literal.find("{{")
    if opening >= 0:
        raise TemplateError(
            f"'{{{{' at character {offset + opening + 1} has no closing '}}}}' "
            "(write {{ '{{' }} for a literal {{)")


def references(text: str) -> set[Reference]:
    """Every reference in `text`; raises TemplateError for malformed tags (for spec validation)."""
    return {segment.reference for segment in _segments(text) if isinstance(segment, _Tag)}


def json_strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (not object keys), in order: the templates it holds.
    Iterative, so no nesting can exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))


def render(text: str, context: RenderContext, *, shell: bool = False) -> str:
    """`text` with every tag replaced; TemplateError names a missing input, step or key. With
    `shell` (a text command), each value is shell-quoted unless its tag says `| raw`."""
    parts: list[str] = []
    quoting, escaped = _UNQUOTED, False  # the shell's state where the next tag stands
    for segment in _segments(text):
        if isinstance(segment, str):
            parts.append(segment)
            if shell:
                quoting, escaped = _quoting_after(segment, quoting)
            continue
        value = _resolve(segment.reference, context)
        if segment.filter == "quote":
            value = shlex.quote(value)
        elif shell and segment.filter != "raw":
            value = _shell_literal(value, quoting)
            if escaped:
                # A backslash just before the tag would escape the value's first character
                # (its opening quote): a backslash-newline is removed by the shell instead.
                value = "\n" + value
        if shell:
            escaped = False
        parts.append(value)
    return "".join(parts)


_UNQUOTED, _SINGLE, _DOUBLE = "", "'", '"'


def _quoting_after(literal: str, state: str) -> tuple[str, bool]:
    """The shell quoting state after `literal`, starting in `state`: outside quotes, inside
    '...' or inside "..." (enough to quote a value for where it stands), and whether it ends
    with a backslash that escapes what follows."""
    escaped = False
    for char in literal:
        if escaped:
            escaped = False
        elif state == _SINGLE:
            if char == "'":
                state = _UNQUOTED
        elif char == "\\":
            escaped = True
        elif state == _DOUBLE:
            if char == '"':
                state = _UNQUOTED
        elif char in ("'", '"'):
            state = char
    return state, escaped


def _shell_literal(value: str, state: str) -> str:
    """`value` written so the shell reads it literally where it stands: one quoted word outside
    quotes; inside '...' every ' closed, escaped and reopened; inside "..." the characters that
    stay special there ($ ` " \\) escaped."""
    if state == _SINGLE:
        return value.replace("'", "'\\''")
    if state == _DOUBLE:
        return re.sub(r'([$`"\\])', r"\\\1", value)
    return shlex.quote(value)


def runs_in_shell(key: str, value: str, json_keys: Collection[str]) -> bool:
    """Whether payload value `value` of `key` is a text command a shell runs: the `command`
    key given as a string that is not a JSON array (an array, in JSON or as text, is argv)."""
    if key != SHELL_KEY or key in json_keys:
        return False
    try:
        return not isinstance(json.loads(value), list)
    except (ValueError, RecursionError):
        return True


def _resolve(reference: Reference, context: RenderContext) -> str:
    kind = reference[0]
    if kind == "run":
        return context.run_id
    if kind == "workflow":
        return context.workflow_id
    if kind == "input":
        name = reference[1]
        if name not in context.input:
            raise TemplateError(
                f"input '{name}' is not set; the run's input has: {_names(context.input)}")
        return context.input[name]
    step_id = reference[1]
    outcome = context.steps.get(step_id)
    if outcome is None:
        raise TemplateError(f"step '{step_id}' has no outcome yet")
    if reference[2] == "status":
        return str(outcome.status)
    key = reference[3]
    if reference[2] == "output":
        return _output(step_id, outcome.result, key)
    if key not in outcome.result:
        raise TemplateError(
            f"step '{step_id}' result has no key '{key}'; it has: {_names(outcome.result)}")
    return outcome.result[key]


def _output(step_id: str, result: Mapping[str, str], key: str) -> str:
    try:
        output = json.loads(result.get(OUTPUT_KEY, ""))
    except (ValueError, RecursionError):
        output = None
    if not isinstance(output, dict):
        raise TemplateError(f"step '{step_id}' has no structured output (no __DSPY_RESULT__ "
                            "line with a JSON object on its stdout)")
    if key not in output:
        raise TemplateError(f"step '{step_id}' output has no key '{key}'; it has: "
                            f"{', '.join(sorted(output)) or '(nothing)'}")
    value = output[key]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _names(mapping: Mapping[str, str]) -> str:
    return ", ".join(sorted(mapping)) or "(nothing)"


def _render_json(value: Any, context: RenderContext) -> Any:
    """`value` with every string in it rendered: a copy, built without recursion (an explicit
    stack), so no nesting can exhaust the interpreter's stack."""
    holder: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(holder, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = render(item, context)
        elif isinstance(item, list):
            copied = list(item)
            container[key] = copied
            stack.extend((copied, index) for index in reversed(range(len(copied))))
        elif isinstance(item, dict):
            copied_map = dict(item)
            container[key] = copied_map
            stack.extend((copied_map, name) for name in reversed(list(copied_map)))
    return holder[0]


def encode_json(value: Any) -> str:
    """The one JSON encoding of payload values, so equal values are equal strings."""
    return json.dumps(value, **_JSON_OPTIONS)


def render_payload(payload: Mapping[str, str], json_keys: Collection[str],
                   context: RenderContext) -> dict[str, str]:
    """A step's payload ready to submit; errors name the payload key at fault."""
    rendered: dict[str, str] = {}
    for key, value in payload.items():
        try:
            if key in json_keys:
                rendered[key] = encode_json(_render_json(json.loads(value), context))
            else:
                rendered[key] = render(value, context,
                                       shell=runs_in_shell(key, value, json_keys))
        except TemplateError as error:
            raise TemplateError(f"payload '{key}': {error}") from None
    return rendered
