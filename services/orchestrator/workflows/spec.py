"""Workflow specs: parse and fully validate the JSON a caller sends to CreateWorkflow.

Two shapes are accepted, and mean the same thing:

    {"steps": [{"id": "a", "class": "cpu_short", "payload": {...}, "depends_on": ["x"],
                "retries": 2, "timeout_seconds": 60, "priority": 0}, ...]}
    {"nodes": [{"id": "a", ...the same fields...}], "edges": [{"from": "a", "to": "b"}]}

The original composer's typed graph (nodes with a `type` and its config, edges with
`source`/`target`) is a third shape of the same model: see typed.py, and nodes.py for what each
node type runs. `parse_document` also takes a whole workflow document (id, name, description,
created_at, updated_at beside the spec) and returns that header apart.

An edge from a to b means b depends on a. Only `id` is required. `class` defaults to cpu_short;
`payload` (an object; values may be any JSON, templates allowed: see templating.py) to {};
`retries` (0-100) and `timeout_seconds` (0-604800) left out, or a timeout of 0, mean the class's
defaults; `priority` is a 32-bit integer, higher first.

Every problem is an InvalidArgument whose message names the step and the field (a spec over
MAX_SPEC_BYTES is ResourceExhausted). `canonical_json()` is the form two specs are compared in:
key order, whitespace, the shape used and the order of steps do not make a new version.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from graphlib import CycleError, TopologicalSorter
from typing import Any

from agent_infra.runtime.errors import InvalidArgument, ResourceExhausted
from agent_infra.runtime.parsing import json_type_name, load_json

from ..model import DEFAULT_CLASS
from . import templating, typed
from .templating import RenderContext, TemplateError

MAX_SPEC_BYTES = 1024 * 1024
MAX_STEPS = 1000
MAX_RETRIES = 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_PAYLOAD_KEY_CHARS = 256
INT32 = (-(2**31), 2**31 - 1)
STEP_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # used with fullmatch: "$" allows "\n"
WORKFLOW_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
STEP_KEYS = frozenset(
    {"id", "class", "payload", "depends_on", "retries", "timeout_seconds", "priority"})


@dataclass(frozen=True)
class StepSpec:
    id: str
    task_class: str
    # Values as the task will get them before rendering: strings as given, other JSON encoded
    # (templating.encode_json); json_keys names the encoded ones so rendering can go inside them.
    payload: dict[str, str]
    depends_on: tuple[str, ...]
    max_attempts: int  # retries + 1; 0 = the class's default
    timeout_seconds: int  # 0 = the class's default
    priority: int
    json_keys: frozenset[str] = frozenset()
    # "task" for a step of the steps form; a typed graph's node type otherwise (typed.py), with
    # the node's config as canonical JSON text.
    kind: str = "task"
    config: str = ""

    @property
    def config_object(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.config) if self.config else {}
        return value

    @property
    def runs_task(self) -> bool:
        return self.kind == "task" or self.kind in typed.TASK_TYPES

    def render_payload(self, context: RenderContext) -> dict[str, str]:
        """The payload to submit; TemplateError (naming the key) fails the step."""
        return templating.render_payload(self.payload, self.json_keys, context)

    def references(self) -> dict[str, set[templating.Reference]]:
        """The references in each payload value; TemplateError names the key of a bad one."""
        refs: dict[str, set[templating.Reference]] = {}
        for key, value in self.payload.items():
            texts = templating.json_strings(json.loads(value)) if key in self.json_keys else [value]
            refs[key] = set()
            try:
                for text in texts:
                    refs[key] |= templating.references(text)
            except TemplateError as error:
                raise TemplateError(f"payload '{key}': {error}") from None
        return refs

    def canonical(self) -> dict[str, Any]:
        """The step as JSON, in the form parse_spec reads back to an equal StepSpec."""
        payload = {key: json.loads(value) if key in self.json_keys else value
                   for key, value in self.payload.items()}
        out: dict[str, Any] = {
            "id": self.id, "class": self.task_class, "payload": payload,
            "depends_on": sorted(self.depends_on), "timeout_seconds": self.timeout_seconds,
            "priority": self.priority}
        if self.max_attempts:
            out["retries"] = self.max_attempts - 1
        return out


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated DAG; steps are kept in id order, the canonical order."""

    steps: tuple[StepSpec, ...]
    # The composer's typed document (minus its header) when the workflow was given as one.
    graph: typed.TypedGraph | None = None
    _by_id: dict[str, StepSpec] = field(init=False, repr=False, compare=False)
    _children: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {step.id: step for step in self.steps}
        children: dict[str, list[str]] = {step.id: [] for step in self.steps}
        for step in self.steps:
            for parent in step.depends_on:
                children[parent].append(step.id)
        # Frozen: the indexes are derived once, here, and never change.
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_children",
                           {key: tuple(sorted(value)) for key, value in children.items()})

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps)

    def step(self, step_id: str) -> StepSpec:
        return self._by_id[step_id]

    def parents(self, step_id: str) -> tuple[str, ...]:
        return self._by_id[step_id].depends_on

    def children(self, step_id: str) -> tuple[str, ...]:
        return self._children[step_id]

    def roots(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps if not step.depends_on)

    def leaves(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps if not self._children[step.id])

    def descendants(self, step_id: str) -> frozenset[str]:
        return _reachable(step_id, self.children)

    def ancestors(self, step_id: str) -> frozenset[str]:
        return _reachable(step_id, self.parents)

    def order(self) -> tuple[str, ...]:
        """Topological order: parents before children, ties broken by id (deterministic)."""
        waiting = {step.id: len(step.depends_on) for step in self.steps}
        ready = [step_id for step_id, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        ordered: list[str] = []
        while ready:
            step_id = heapq.heappop(ready)
            ordered.append(step_id)
            for child in self._children[step_id]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        return tuple(ordered)

    def input_names(self) -> frozenset[str]:
        """Input names the payloads refer to (a caller may check a run's input against them)."""
        return frozenset(ref[1] for step in self.steps
                         for refs in step.references().values() for ref in refs
                         if ref[0] == "input")

    def canonical_json(self) -> str:
        if self.graph is not None:
            return self.graph.document_json
        return templating.encode_json({"steps": [step.canonical() for step in self.steps]})


def _reachable(start: str, neighbours: Any) -> frozenset[str]:
    seen: set[str] = set()
    stack = list(neighbours(start))
    while stack:
        step_id = stack.pop()
        if step_id not in seen:
            seen.add(step_id)
            stack.extend(neighbours(step_id))
    return frozenset(seen)


def validate_workflow_id(workflow_id: str) -> None:
    if not workflow_id:
        raise InvalidArgument("workflow id is required")
    if not WORKFLOW_ID_PATTERN.fullmatch(workflow_id):
        raise InvalidArgument(
            f"workflow id {workflow_id[:140]!r} is invalid: use 1-128 letters, digits, "
            "'-', '_', '.' or ':'")


def parse_document(data: bytes | str, known_classes: Collection[str] | None,
                   *, default_class: str = DEFAULT_CLASS) -> tuple[dict[str, Any], WorkflowSpec]:
    """A whole workflow document (the spec, plus the header keys id, name, description,
    created_at, updated_at that the composer sends with it): (header, spec)."""
    document = _load_json(data)
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"spec must be a JSON object with \"steps\" (or \"nodes\" and \"edges\"), "
            f"got {json_type_name(document)}")
    header, rest = typed.split_header(document)
    return header, _parse_object(rest, known_classes, default_class)


def parse_spec(data: bytes | str, known_classes: Collection[str] | None,
               *, default_class: str = DEFAULT_CLASS) -> WorkflowSpec:
    """Validate `data` fully. known_classes None accepts any class (reloading a stored spec)."""
    document = _load_json(data)
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"spec must be a JSON object with \"steps\" (or \"nodes\" and \"edges\"), "
            f"got {json_type_name(document)}")
    return _parse_object(document, known_classes, default_class)


def _parse_object(document: dict[str, Any], known_classes: Collection[str] | None,
                  default_class: str) -> WorkflowSpec:
    if typed.is_typed(document):
        return _parse_typed(document, known_classes)
    raw_steps, edges, where = _shape(document)
    steps = [_parse_step(raw, f"{where}[{index}]", known_classes, default_class)
             for index, raw in enumerate(raw_steps)]
    _check_unique(steps)
    steps = _add_edges(steps, edges)
    by_id = {step.id: step for step in steps}
    for step in steps:
        for parent in step.depends_on:
            if parent not in by_id:
                raise InvalidArgument(
                    f"step '{step.id}' depends on unknown step '{parent}'")
    _check_acyclic(by_id)
    spec = WorkflowSpec(tuple(sorted(steps, key=lambda step: step.id)))
    _check_references(spec)
    return spec


def _parse_typed(document: dict[str, Any], known_classes: Collection[str] | None
                 ) -> WorkflowSpec:
    nodes, graph = typed.parse(document, known_classes)
    steps: list[StepSpec] = []
    for index, node in enumerate(nodes):
        if not STEP_ID_PATTERN.fullmatch(node.id):
            raise InvalidArgument(f"nodes[{index}].id {node.id[:80]!r} is invalid: a node id is "
                                  "1-64 letters, digits, '-' or '_'")
        steps.append(StepSpec(
            id=node.id, task_class=node.task_class, payload={}, depends_on=node.depends_on,
            max_attempts=0, timeout_seconds=node.timeout_seconds, priority=0,
            kind=node.type, config=templating.encode_json(node.config)))
    _check_unique(steps)
    _check_acyclic({step.id: step for step in steps})
    return WorkflowSpec(tuple(sorted(steps, key=lambda step: step.id)), graph)


def _load_json(data: bytes | str) -> Any:
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise ResourceExhausted(f"spec is {size} bytes; the limit is {MAX_SPEC_BYTES}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"spec is not UTF-8: invalid byte at offset {exc.start}") from None
    if not data.strip():
        raise InvalidArgument("spec is empty: send a JSON object with \"steps\"")
    try:
        # Bounded nesting and numbers: every later stage (rendering, encoding, the task's
        # decoding) can handle what is accepted here, so no stored spec can fail them.
        return load_json(data, "spec", object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_no_constants)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python's json keeps the last of two equal keys; a spec with both is ambiguous, so say so.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidArgument(f"spec has the key {key!r} twice in one JSON object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise InvalidArgument(f"spec uses {name}, which is not valid JSON")


def _shape(document: dict[str, Any]) -> tuple[list[Any], list[tuple[str, str]], str]:
    """The step objects, the edges (parent, child) and the key the steps came under."""
    if "steps" in document and ("nodes" in document or "edges" in document):
        raise InvalidArgument("spec has both \"steps\" and \"nodes\"/\"edges\": use one shape")
    graph = "nodes" in document or "edges" in document
    shape = {"nodes", "edges"} if graph else {"steps"}
    unknown = sorted(set(document) - shape)
    if unknown:
        raise InvalidArgument(
            f"spec has unknown keys: {', '.join(unknown)} (allowed: {', '.join(sorted(shape))})")
    where = "steps" if "steps" in shape else "nodes"
    raw_steps = document.get(where)
    if raw_steps is None:
        raise InvalidArgument(f"spec has no \"{where}\": give a list of steps")
    if not isinstance(raw_steps, list):
        raise InvalidArgument(f"\"{where}\" must be a list, got {json_type_name(raw_steps)}")
    if not raw_steps:
        raise InvalidArgument(f"\"{where}\" is empty: a workflow needs at least one step")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidArgument(f"\"{where}\" has {len(raw_steps)} steps; the limit is {MAX_STEPS}")
    return raw_steps, _parse_edges(document.get("edges", [])), where


def _parse_edges(raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise InvalidArgument(f"\"edges\" must be a list, got {json_type_name(raw)}")
    edges: list[tuple[str, str]] = []
    for index, edge in enumerate(raw):
        where = f"edges[{index}]"
        if not isinstance(edge, dict):
            raise InvalidArgument(f"{where} must be an object {{\"from\": ..., \"to\": ...}}")
        unknown = sorted(set(edge) - {"from", "to"})
        if unknown:
            raise InvalidArgument(
                f"{where} has unknown keys: {', '.join(unknown)} (allowed: from, to)")
        ends = []
        for end in ("from", "to"):
            value = edge.get(end)
            if not isinstance(value, str) or not value:
                raise InvalidArgument(f"{where}.{end} must be a step id (a non-empty string)")
            ends.append(value)
        edges.append((ends[0], ends[1]))
    return edges


def _parse_step(raw: Any, where: str, known_classes: Collection[str] | None,
                default_class: str) -> StepSpec:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object, got {json_type_name(raw)}")
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not STEP_ID_PATTERN.fullmatch(step_id):
        shown = "missing" if step_id is None else repr(step_id)[:80]
        raise InvalidArgument(
            f"{where}.id is {shown}: a step id is 1-64 letters, digits, '-' or '_'")
    where = f"step '{step_id}'"
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise InvalidArgument(
            f"{where} has unknown keys: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(STEP_KEYS))})")
    task_class = raw.get("class", default_class)
    if not isinstance(task_class, str):
        raise InvalidArgument(f"{where}: class must be a string, got {json_type_name(task_class)}")
    if known_classes is not None and task_class not in known_classes:
        raise InvalidArgument(
            f"{where}: unknown class '{task_class}'; known classes: "
            f"{', '.join(sorted(known_classes))}")
    retries = _bounded_int(raw, "retries", where, 0, MAX_RETRIES)
    payload, json_keys = _parse_payload(raw.get("payload", {}), where)
    return StepSpec(
        id=step_id, task_class=task_class, payload=payload,
        depends_on=_parse_depends_on(raw.get("depends_on", []), where),
        max_attempts=0 if retries is None else retries + 1,
        timeout_seconds=_bounded_int(raw, "timeout_seconds", where, 0, MAX_TIMEOUT_SECONDS) or 0,
        priority=_bounded_int(raw, "priority", where, *INT32) or 0,
        json_keys=json_keys)


def _bounded_int(raw: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    if key not in raw:
        return None
    value = raw[key]
    # bool is an int in Python; `true` as a retry count is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(
            f"{where}: {key} must be an integer from {low} to {high}, got {json.dumps(value)}")
    return value


def _parse_depends_on(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise InvalidArgument(f"{where}: depends_on must be a list of step ids (strings)")
    # Sorted and unique: neither the order nor a repeat changes what a step waits for.
    return tuple(sorted(set(raw)))


def _parse_payload(raw: Any, where: str) -> tuple[dict[str, str], frozenset[str]]:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: payload must be an object, got {json_type_name(raw)}")
    payload: dict[str, str] = {}
    json_keys: set[str] = set()
    for key, value in raw.items():
        if not key or len(key) > MAX_PAYLOAD_KEY_CHARS:
            raise InvalidArgument(
                f"{where}: payload keys must be 1-{MAX_PAYLOAD_KEY_CHARS} characters")
        if isinstance(value, str):
            payload[key] = value
        else:
            payload[key] = templating.encode_json(value)
            json_keys.add(key)
    return payload, frozenset(json_keys)


def _check_unique(steps: Iterable[StepSpec]) -> None:
    seen: set[str] = set()
    duplicates: set[str] = set()
    for step in steps:
        (duplicates if step.id in seen else seen).add(step.id)
    if duplicates:
        raise InvalidArgument(
            f"duplicate step ids: {', '.join(sorted(duplicates))} (each id must be unique)")


def _add_edges(steps: list[StepSpec], edges: list[tuple[str, str]]) -> list[StepSpec]:
    known = {step.id for step in steps}
    extra: dict[str, list[str]] = {}
    for index, (parent, child) in enumerate(edges):
        for end, name in (("from", parent), ("to", child)):
            if name not in known:
                raise InvalidArgument(f"edges[{index}].{end} names unknown step '{name}'")
        extra.setdefault(child, []).append(parent)
    out: list[StepSpec] = []
    for step in steps:
        if step.id in extra:
            depends_on = tuple(sorted({*step.depends_on, *extra[step.id]}))
            step = replace(step, depends_on=depends_on)
        out.append(step)
    return out


def _check_acyclic(by_id: Mapping[str, StepSpec]) -> None:
    """Raise naming one cycle, as parent -> child -> ... -> parent."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    # Steps, then each step's parent links, in id order: graphlib looks for a cycle from the
    # first step added, following children in the order added, so the cycle named is the
    # first one met from the lowest id (the same spec always names the same cycle).
    for step_id in sorted(by_id):
        sorter.add(step_id)
    for step_id in sorted(by_id):
        for parent in by_id[step_id].depends_on:
            sorter.add(step_id, parent)
    try:
        sorter.prepare()
    except CycleError as error:
        cycle: list[str] = error.args[1]
        raise InvalidArgument(
            f"dependency cycle: {' -> '.join(cycle)} "
            "(each step depends on the one before it)") from None


def _check_references(spec: WorkflowSpec) -> None:
    known = set(spec.ids)
    for step in spec.steps:
        ancestors = spec.ancestors(step.id)
        try:
            by_key = step.references()
        except TemplateError as error:
            raise InvalidArgument(f"step '{step.id}' {error}") from None
        for key, refs in by_key.items():
            for ref in sorted(refs):
                if ref[0] != "steps":
                    continue
                target = ref[1]
                if target not in known:
                    raise InvalidArgument(
                        f"step '{step.id}' payload '{key}' refers to unknown step '{target}'")
                if target not in ancestors:
                    raise InvalidArgument(
                        f"step '{step.id}' payload '{key}' refers to step '{target}', which is "
                        f"not an ancestor of '{step.id}' (add it to depends_on)")
