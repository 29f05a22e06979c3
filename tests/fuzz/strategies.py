"""Hypothesis strategies for every RPC of both services and every HTTP route.

Requests are built field by field from the message descriptors in agent_infra.wire, so an RPC or
a field added to the protos is fuzzed without a change here. A field's name picks a more pointed
strategy where one helps (ids from a small pool so calls meet each other's state, workflow specs
as JSON built from hostile fragments, payload maps with the keys the daemons read); any other
field gets the generic strategy of its type.

Hostile values on purpose: NUL, non-ASCII digits ("²" is a digit to str.isdigit() but not to
int(); "٣" is one to both), 5,000-digit numbers (past Python's int/str conversion limit), int32
and int64 edges and values past them in JSON, deep and huge JSON, invalid UTF-8 in bytes fields,
template tags, shell metacharacters.

Nothing fuzzed may run a container: image names are random or point at 127.0.0.1:1 (a closed
port, so a pull fails at once), and never name an image that exists on the engine.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

#: an image no engine has; pulls of it fail at once (closed port)
ABSENT_IMAGE_PREFIX = "127.0.0.1:1/agent-infra-fuzz-absent"

# Numbers as text, the way they reach payload values, page tokens and JSON specs.
NUMBER_TEXTS = (
    "0", "1", "-1", "-0", "00", "+1", " 1 ", "1.5", "1e3", "1e999", "-1e999", "NaN", "inf",
    "0x10", "1_000", "²", "³", "٣", "\uff11\uff12", "߁", "¹²", "Ⅻ", "٣٣٣",
    str(INT32[1]), str(INT32[1] + 1), str(INT32[0] - 1), str(INT64[1]), str(INT64[1] + 1),
    str(INT64[0]), str(INT64[0] - 1), str(2**64), str(2**200), "9" * 25, "9" * 4300, "9" * 5000,
    "-" + "9" * 5000,
)
SPECIAL_TEXTS = (
    "", " ", "\x00", "a\x00b", "\n", "\t", "\r\n", "é", "😀", "\u202e", "\ufeff", "ß" * 3,
    "../../etc/passwd", "/etc/shadow", "a/b", ".", "..", "-", "--help", "$(id)", "`id`",
    "; echo INJECTED", "' OR 1=1 --", "%s%s%n", "{{", "}}", "{{ input.x }}", "{{ run.id }}",
    "{{ steps.a.result.stdout }}", "{{ '{{' }}", "{{ steps..x }}", "*", "task_*", "null",
    "true", "{}", "[]", '{"a":', "[" * 64,
)
PAYLOAD_KEYS = (
    "command", "image", "env", "stdin", "workdir", "timeout_seconds", "max_attempts",
    "retry_on_failure", "gpus", "partition", "time_limit", "cpus", "memory", "nodes",
)
OVERRIDE_KEYS = (
    "image", "command", "entrypoint", "user", "restart", "network_mode", "env", "ports",
    "volumes", "privileged", "cap_add", "memory", "cpus", "labels", "healthcheck",
)
CLASSES = ("cpu_short", "cpu_long", "gpu", "gpu_slurm", "CPU_SHORT", "cpu_short ", "nope")
STATUSES = ("pending", "running", "completed", "failed", "cancelled", "PENDING", "done")
EVENT_TYPES = ("task_submitted", "task_completed", "workflow_started", "task_*", "*")
METRIC_NAMES = ("completed_total", "queue_depth.cpu_short", "queue_depth.*", "*", "running.")
#: a small pool, so runs meet the workflows other cases created and tasks meet their ids
ID_POOL = (*(f"fz-{n}" for n in range(8)), "a", "fz:1", "fz.1", "x" * 128, "x" * 129)
WORKFLOW_POOL = tuple(f"fzwf-{n}" for n in range(6))
SERVICE_POOL = ("fz", "fz-other", "nope")  # "fz" is the fuzz env-manager's one service

JSONText = str


def _runs(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    """A character repeated a drawn number of times: huge strings for little generated data."""
    return st.builds(lambda c, n: c * n, st.sampled_from(alphabet), st.integers(low, high))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, each drawn in proportion to its weight (one_of weighs them equally)."""
    total = sum(weight for weight, _ in choices)

    def pick(n: int) -> st.SearchStrategy[Any]:
        for weight, strategy in choices:
            if n < weight:
                return strategy
            n -= weight
        raise AssertionError(n)

    return st.integers(0, total - 1).flatmap(pick)


def huge_text() -> st.SearchStrategy[str]:
    """100 KB to 200 KB mostly; now and then 5 MB, past the 4 MiB message limit."""
    return weighted((20, _runs("x9²\x00é[{", 1000, 200_000)), (1, st.just("y" * 5_000_000)))


def text_values() -> st.SearchStrategy[str]:
    """Any string a field might get: hypothesis' unicode text, specials, numbers, huge ones."""
    return weighted(
        (30, st.text(max_size=24)),
        (20, st.sampled_from(SPECIAL_TEXTS)),
        (20, st.sampled_from(NUMBER_TEXTS)),
        (10, st.sampled_from(PAYLOAD_KEYS + CLASSES + STATUSES)),
        (5, _runs("x9²\x00é[{", 100, 5000)),
        (1, huge_text()),
    )


def absent_image() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda tag: f"{ABSENT_IMAGE_PREFIX}-{uuid.uuid4().hex[:8]}:{tag}",
                  st.sampled_from(("latest", "x", "1"))),
        st.text(max_size=30).map(lambda s: f"{ABSENT_IMAGE_PREFIX}/{s}"),
        st.sampled_from(("", "UPPER/Case", "a" * 300, "img@sha256:zz", ":", "\x00",
                         f"{ABSENT_IMAGE_PREFIX}:²")),
    )


# -- JSON built as text, so it can hold what json.dumps cannot make -------------------------------


def json_string(text: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[JSONText]:
    return st.builds(lambda s, ascii_only: json.dumps(s, ensure_ascii=ascii_only),
                     text_values() if text is None else text, st.booleans())


def json_number() -> st.SearchStrategy[JSONText]:
    return st.one_of(
        st.integers().map(str),
        st.sampled_from((str(INT32[1] + 1), str(INT32[0] - 1), str(INT64[1] + 1),
                         str(INT64[0] - 1), str(2**200), "9" * 5000, "-" + "9" * 5000, "1e999",
                         "-1e999", "1.5", "-0", "0.0", "1E400", "5e-324")),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
    )


def deep_json() -> st.SearchStrategy[JSONText]:
    """Lists or objects nested n deep (finding 1: about 900 lists in a step payload)."""
    def nest(depth: int, kind: str) -> str:
        if kind == "list":
            return "[" * depth + "]" * depth
        if kind == "object":
            return '{"a":' * depth + "1" + "}" * depth
        return '{"a":[' * depth + "1" + "]}" * depth
    return st.builds(nest, st.sampled_from((50, 200, 500, 800, 900, 950, 999, 1000, 3000,
                                            100_000)),
                     st.sampled_from(("list", "object", "mixed")))


def json_values(max_leaves: int = 12) -> st.SearchStrategy[JSONText]:
    leaves = st.one_of(st.sampled_from(("null", "true", "false")), json_number(), json_string())
    return weighted(
        (20, st.recursive(
            leaves,
            lambda inner: st.one_of(
                st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
                st.dictionaries(json_string(st.text(max_size=8)), inner, max_size=4).map(
                    lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}")),
            max_leaves=max_leaves)),
        (4, deep_json()),
        (1, st.builds(lambda n: "[" + ",".join(["1"] * n) + "]", st.integers(1000, 200_000))),
        (3, st.sampled_from(("", "{", "[1,]", "{'a': 1}", "NaN", "²", "\x00", '"\\ud800"', "01"))),
    )


def json_object(fields: dict[str, st.SearchStrategy[JSONText]], *,
                required: dict[str, st.SearchStrategy[JSONText]] | None = None
                ) -> st.SearchStrategy[JSONText]:
    """A JSON object with `required` and any subset of `fields`; now and then an unknown key."""
    def text(d: dict[str, str], extra: str | None) -> str:
        items = [f"{json.dumps(k)}:{v}" for k, v in d.items()]
        if extra is not None:
            items.append(f'"zz_unknown":{extra}')
        return "{" + ",".join(items) + "}"
    return st.builds(text, st.fixed_dictionaries(required or {}, optional=fields),
                     weighted((7, st.none()), (1, json_values(3))))


def payload_object() -> st.SearchStrategy[JSONText]:
    keys = json_string(st.one_of(st.sampled_from(PAYLOAD_KEYS), st.text(max_size=10)))
    values = st.one_of(json_values(6), json_string(st.sampled_from(
        ("{{ input.x }}", "{{ steps.a.result.stdout }}", "{{ run.id }}", "{{", "echo hi"))))
    return weighted(
        (10, st.dictionaries(keys, values, max_size=5).map(
            lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}")),
        (2, deep_json()), (2, json_values(4)))


def workflow_spec() -> st.SearchStrategy[bytes]:
    """CreateWorkflow's spec: mostly valid or nearly valid JSON in either shape (so runs start
    and their payloads get rendered), with hostile values in every field now and then."""
    ids = ("a", "b", "c", "d")
    step_id = weighted((6, st.sampled_from(ids).map(json.dumps)), (1, json_string()))
    small = st.integers(-2, 10).map(str)

    def often_valid(valid: st.SearchStrategy[JSONText]) -> st.SearchStrategy[JSONText]:
        return weighted((4, valid), (1, json_number()), (1, json_values(2)))

    fields = {
        "class": often_valid(st.sampled_from(("cpu_short", "cpu_long")).map(json.dumps)),
        "payload": payload_object(),
        "depends_on": weighted(
            (4, st.just("[]")),
            (2, st.lists(step_id, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")),
            (1, json_values(3))),
        "retries": often_valid(small),
        "timeout_seconds": often_valid(small),
        "priority": often_valid(small),
    }
    step = st.tuples(step_id, json_object(fields)).map(
        lambda t: '{"id":' + t[0] + "," + t[1][1:] if t[1] != "{}" else '{"id":' + t[0] + "}")
    steps = weighted(
        (8, st.lists(step, min_size=1, max_size=4, unique_by=lambda s: s.split(",")[0])),
        (1, st.lists(step, max_size=4)),  # empty, or with duplicate ids
    ).map(lambda xs: "[" + ",".join(xs) + "]")
    edge = json_object({}, required={"from": step_id, "to": step_id})
    edges = st.lists(edge, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
    text = weighted(
        (8, steps.map(lambda s: '{"steps":' + s + "}")),
        (2, st.tuples(steps, edges).map(
            lambda se: '{"nodes":' + se[0] + ',"edges":' + se[1] + "}")),
        (1, json_values(8)),
        (1, st.builds(lambda n: '{"steps":[' + ",".join(
            f'{{"id":"s{i}","depends_on":["s{i - 1}"]}}' if i else '{"id":"s0"}'
            for i in range(n)) + "]}", st.sampled_from((999, 1000, 1001, 5000)))),
    )
    return weighted(
        (10, text.map(lambda s: s.encode("utf-8", "surrogatepass"))),
        (1, invalid_utf8()),
        (1, st.binary(max_size=64)),
    )


def invalid_utf8() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b'{"steps":[{"id":"\xff"}]}',
                         b"\xef\xbb\xbf{}", b"\x00", b'{"steps":[]}\x00')),
        st.builds(lambda n: b"\xff" * n, st.integers(1, 100_000)),
    )


# -- request messages from descriptors ------------------------------------------------------------


def _entry(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _is_map(field: FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _ranged(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted(v for v in {low, high, low + 1, high - 1, 0, 1, -1, 100, 1000, 1001, 86_400}
                   if low <= v <= high)
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """The generic strategy for a scalar field of this type."""
    t = field.type
    f = FieldDescriptor
    if t in (f.TYPE_INT32, f.TYPE_SINT32, f.TYPE_SFIXED32):
        return _ranged(*INT32)
    if t in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64):
        return _ranged(*INT64)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _ranged(*UINT32)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _ranged(*UINT64)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), _ranged(*INT32))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), invalid_utf8(), json_values(6).map(str.encode))
    if t == FieldDescriptor.TYPE_STRING:
        return text_values()
    raise TypeError(f"no strategy for field {field.full_name} of type {t}")


def _named(field: FieldDescriptor, method: str) -> st.SearchStrategy[Any] | None:
    """A pointed strategy chosen by the field's name, or None for the generic one."""
    name = field.name
    if field.type == FieldDescriptor.TYPE_BYTES and name == "spec":
        return workflow_spec()
    if field.type != FieldDescriptor.TYPE_STRING:
        return None
    pools: dict[str, Sequence[str]] = {
        "workflow_id": WORKFLOW_POOL + ID_POOL, "id": ID_POOL + WORKFLOW_POOL,
        "task_id": ID_POOL, "task_ids": ID_POOL, "run_id": ("run-" + "0" * 32, "run-x"),
        "class": CLASSES, "task_class": CLASSES, "workload_class": CLASSES,
        "service_name": SERVICE_POOL, "service_names": SERVICE_POOL,
        "statuses": STATUSES, "event_types": EVENT_TYPES, "metric_names": METRIC_NAMES,
        "idempotency_key": ("k1", "k2"), "page_token": ("", "0", "100", "²", "-1", "9" * 5000),
    }
    if method == "CreateWorkflow" and name == "id":
        pools["id"] = WORKFLOW_POOL + ID_POOL
    if name in pools:
        return weighted((3, st.sampled_from(tuple(pools[name]))), (1, text_values()))
    if name == "image_names":
        return absent_image()
    return None


def field_strategy(field: FieldDescriptor, method: str) -> st.SearchStrategy[Any]:
    if _is_map(field):
        key_field = _entry(field).fields_by_name["key"]
        value_field = _entry(field).fields_by_name["value"]
        if key_field.type == FieldDescriptor.TYPE_STRING and \
                value_field.type == FieldDescriptor.TYPE_STRING:
            return string_map(field.name)
        keys = scalar(key_field) if key_field.type != FieldDescriptor.TYPE_STRING else text_values()
        values = value_strategy(value_field, method)
        return st.dictionaries(keys, values, max_size=5)
    single = _named(field, method)
    if single is None:
        single = value_strategy(field, method)
    if _is_repeated(field):
        return st.lists(single, max_size=5)
    return single


def value_strategy(field: FieldDescriptor, method: str) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return message_strategy(field.message_type, method)
    return scalar(field)


def string_map(name: str) -> st.SearchStrategy[dict[str, str]]:
    """map<string, string>: payloads, inputs, overrides, with the keys the daemons read."""
    known = OVERRIDE_KEYS if name == "overrides" else PAYLOAD_KEYS
    keys = st.one_of(st.sampled_from(known), st.text(max_size=12), st.sampled_from(SPECIAL_TEXTS))
    values = st.one_of(text_values(), json_values(6), payload_object())
    return st.dictionaries(keys, values, max_size=6)


def message_strategy(descriptor: Descriptor, method: str = "") -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    fields = {f.name: field_strategy(f, method) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if _is_map(field):
                target = getattr(message, name)
                for key, item in value.items():
                    if _entry(field).fields_by_name["value"].message_type is not None:
                        target[key].CopyFrom(item)
                    else:
                        target[key] = item
            elif _is_repeated(field):
                if field.message_type is not None:
                    for item in value:
                        getattr(message, name).add().CopyFrom(item)
                else:
                    getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


# -- the RPCs, with the few changes that keep fuzzing from running anything -----------------------


@dataclass(frozen=True)
class Rpc:
    service: str  # full name, e.g. orchestrator.v1.OrchestratorService
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return str(self.method.name)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def rpcs(file_descriptor: Any) -> list[Rpc]:
    """Every RPC of every service a generated *_pb2 module's DESCRIPTOR declares."""
    return [Rpc(service.full_name, method)
            for service in file_descriptor.services_by_name.values()
            for method in service.methods]


def _safe_execute_task(request: Message) -> Message:
    # A fuzzed ExecuteTask must never run a container: always name an image no engine has.
    payload = request.payload  # type: ignore[attr-defined]
    payload["image"] = f"{ABSENT_IMAGE_PREFIX}-{uuid.uuid4().hex[:8]}:never"
    return request


def _safe_overrides(request: Message) -> Message:
    overrides = request.overrides  # type: ignore[attr-defined]
    if "image" in overrides:
        overrides["image"] = f"{ABSENT_IMAGE_PREFIX}-{uuid.uuid4().hex[:8]}:never"
    return request


def _safe_sandbox(request: Message) -> Message:
    # A fuzzed CreateSandbox must never start a container: an image no class allows.
    request.image = f"{ABSENT_IMAGE_PREFIX}-{uuid.uuid4().hex[:8]}:never"  # type: ignore[attr-defined]
    return request


SAFETY: dict[str, Callable[[Message], Message]] = {
    "env_manager.v1.EnvManagerService/ExecuteTask": _safe_execute_task,
    "env_manager.v1.EnvManagerService/CreateSandbox": _safe_sandbox,
    "orchestrator.v1.OrchestratorService/CreateSandbox": _safe_sandbox,
    "env_manager.v1.EnvManagerService/StartServices": _safe_overrides,
}


@functools.cache
def requests_for(rpc: Rpc) -> st.SearchStrategy[Message]:
    strategy = message_strategy(rpc.method.input_type, rpc.name)
    safety = SAFETY.get(f"{rpc.service}/{rpc.name}")
    return strategy.map(safety) if safety is not None else strategy


def rpc_cases(all_rpcs: Sequence[Rpc]) -> st.SearchStrategy[tuple[Rpc, Message]]:
    """One RPC (each equally likely) and a request for it."""
    return st.sampled_from(list(all_rpcs)).flatmap(
        lambda rpc: requests_for(rpc).map(lambda request: (rpc, request)))


# -- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    method: str
    path: str
    body: bytes | None
    content_type: str | None


def submit_body() -> st.SearchStrategy[bytes]:
    """POST /queue/submit bodies: the documented shape with hostile or wrongly typed fields."""
    text = json_object({
        "id": st.one_of(json_string(st.sampled_from(ID_POOL)), json_values(3)),
        "class": st.one_of(json_string(st.sampled_from(CLASSES)), json_values(3)),
        "payload": st.one_of(payload_object(), json_values(3)),
        "priority": st.one_of(json_number(), json_values(2),
                              json_string(st.sampled_from(NUMBER_TEXTS))),
        "workflow_id": st.one_of(json_string(st.sampled_from(WORKFLOW_POOL)), json_values(2)),
        "timeout_seconds": json_number(),
        "max_attempts": json_number(),
    })
    return text.map(lambda s: s.encode("utf-8", "surrogatepass"))


#: what fills a route's `{name}` parts: unknown ids (never a seeded one, so a PUT or POST can't
#: legitimately change what the run checks is unchanged), names that exist, and hostile text
PATH_VALUES = ("no-such-id", "cpu_short", "0", "-1", "stop", "console.css", "²", "%00", "%2e%2e",
               "..%2f..%2fetc%2fpasswd", "%3Cscript%3E", "a" * 3000, "x%ff%fe", "%20")
PATH_PARAMETER = re.compile(r"\{[^}]+\}")


def _route_path(route: str, value: str, query: str) -> str:
    return PATH_PARAMETER.sub(value, route) + query


def http_cases(routes: Sequence[str]) -> st.SearchStrategy[HttpCase]:
    queries = st.sampled_from(("", "", "?x=²", "?since=" + "9" * 400, "?page=-1&size=²",
                               "?status=%00&class=%3Cb%3E", "?types=nope&last_event_id=x"))
    paths = st.one_of(
        st.builds(_route_path, st.sampled_from(list(routes)), st.sampled_from(PATH_VALUES),
                  queries),
        st.sampled_from(("/queue", "/queue/submit/", "/%00", "/..%2f..%2fetc", "/" + "a" * 5000)),
    )
    bodies = st.one_of(
        st.none(),
        submit_body(),
        json_values(8).map(lambda s: s.encode("utf-8", "surrogatepass")),
        invalid_utf8(),
        st.binary(max_size=64),
        st.builds(lambda n: b"x" * n, st.sampled_from((1 << 20, (1 << 20) + 1, 3 << 20))),
    )
    return st.builds(
        HttpCase,
        st.sampled_from(("GET", "POST", "GET", "POST", "PUT", "DELETE")),
        paths, bodies,
        st.sampled_from(("application/json", None, "text/plain",
                         "application/json; charset=latin-1")),
    )
