"""Run fuzz cases against real daemons and judge what comes back.

The daemons run as subprocesses on free loopback ports (tests.daemon_support):

* the orchestrator dispatches to an env-manager whose classes name an absent image, so every
  task it accepts is dispatched (its payload read, its templates rendered) and then refused:
  nothing fuzzed is ever executed;
* env-manager gets a stack of its own with one service, "fz", whose image is absent (pulls go to
  127.0.0.1:1 and fail at once), and the test image for cpu_short; every fuzzed ExecuteTask
  names an absent image (strategies.SAFETY), so nothing fuzzed runs there either.

Hypothesis draws one case per example, and the example hands it to a pipeline that keeps a few
unary calls and more streams in flight (a stream is read for at most STREAM_SECONDS), so slow
streams do not serialise the run. No case raises inside hypothesis: every outcome is recorded,
and the run ends with a report of the status histogram and of each distinct failure with its
smallest input. So one run lists every finding at once, in bounded time (no shrinking phase).

A case fails when its status is outside the documented set (gRPC: never UNKNOWN, INTERNAL,
DATA_LOSS...; HTTP: never 5xx but 503), when an error message is longer than DETAILS_LIMIT (the
daemon echoed unbounded input), or when the daemon is gone. After the run the daemon must be
healthy (grpc.health.v1 SERVING, /health 200) and what was accepted before must be unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
from agent_infra.orchestrator.app import OrchestratorApp
from agent_infra.orchestrator.settings import OrchestratorSettings
from agent_infra.wire import env_manager_pb2, orchestrator_pb2
from aiohttp import web
from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings

from tests.daemon_support import DaemonProcess, running_daemon
from tests.docker_support import TEST_IMAGE
from tests.env_support import remove_stack_containers, stack_name
from tests.fuzz.strategies import ABSENT_IMAGE_PREFIX, HttpCase, Rpc, http_cases, rpc_cases, rpcs

#: what a caller may get for anything it sends (DESIGN.md "Cross-cutting rules"), plus the two
#: codes the fuzzer's own deadline and cancellation produce
ALLOWED_CODES = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
})
#: HTTP statuses the routes document (aiohttp adds 405, 413 and 404 for other paths; the
#: console answers 403 to a POST without its CSRF token)
ALLOWED_HTTP = frozenset({200, 201, 400, 401, 403, 404, 405, 409, 412, 413, 415, 429, 503})
#: an error message longer than this echoed unbounded input (finding 11)
DETAILS_LIMIT = 2048
UNARY_SECONDS = 20.0
STREAM_SECONDS = 0.5
STREAM_MESSAGES = 3
UNARY_IN_FLIGHT = 16
STREAMS_IN_FLIGHT = 32
HEALTH_EVERY = 250  # cases between liveness checks during a run
#: what the daemon runtime serves beside each app's own routes
RUNTIME_ROUTES = ("/health", "/metrics")
ENV_MANAGER_ROUTES = RUNTIME_ROUTES
T = TypeVar("T")


def _compact(text: str, limit: int = 400) -> str:
    """Runs of a repeated character written c*N, then cut to `limit` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = re.sub(r"(.)\1{11,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", text)
    text = re.sub(r"((?:\\x[0-9a-f]{2}|\\[0-7]{3}|\\u[0-9a-f]{4}))\1{5,}",
                  lambda m: f"{m.group(1)}*{len(m.group(0)) // len(m.group(1))}", text)
    text = re.sub(r"(.{2,8}?)\1{5,}",
                  lambda m: f"({m.group(1)})*{len(m.group(0)) // len(m.group(1))}", text)
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit} chars)"


def describe_request(request: Message) -> str:
    return _compact(text_format.MessageToString(request, as_one_line=True, as_utf8=True))


def describe_http(case: HttpCase) -> str:
    body = "no body" if case.body is None else repr(case.body)
    return _compact(f"{case.method} {case.path} [{case.content_type}] {body}")


def _signature(detail: str) -> str:
    """A failure's message with the input-dependent parts taken out, to group equal failures."""
    detail = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", detail)
    return re.sub(r"\d+", "N", detail)[:90]


@dataclass
class Failure:
    count: int
    sample: str  # the smallest input seen with this failure
    detail: str


@dataclass
class Report:
    daemon: str
    cases: int = 0
    seconds: float = 0.0
    histogram: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Failure] = field(default_factory=dict)
    #: problems of the daemon as a whole: dead, unhealthy, seeded state changed
    problems: list[str] = field(default_factory=list)

    def record(self, what: str, outcome: str, ok: bool, sample: str, detail: str = "") -> None:
        self.cases += 1
        self.histogram[f"{what} {outcome}"] += 1
        if ok:
            return
        key = f"{what} {outcome}"
        if "over" not in outcome:  # a message too long is one finding whatever it says
            key += f": {_signature(detail)}"
        found = self.failures.get(key)
        if found is None:
            self.failures[key] = Failure(1, sample, _compact(detail, 300))
        else:
            found.count += 1
            if len(sample) < len(found.sample):
                found.sample, found.detail = sample, _compact(detail, 300)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems

    def text(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        lines = [f"{self.daemon}: {self.cases} cases in {self.seconds:.1f} s ({rate:.0f}/s)",
                 "  status histogram:"]
        lines += [f"    {count:6d}  {key}" for key, count in sorted(self.histogram.items())]
        lines.append(f"  failures: {len(self.failures)} distinct, "
                     f"{sum(f.count for f in self.failures.values())} cases")
        for key, failure in sorted(self.failures.items()):
            lines.append(f"    [{failure.count}x] {key}")
            lines.append(f"        input:  {failure.sample}")
            lines.append(f"        detail: {failure.detail}")
        lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


# -- calls ----------------------------------------------------------------------------------------


def _multicallable(channel: grpc.aio.Channel, rpc: Rpc) -> Any:
    kind = (rpc.method.client_streaming, rpc.method.server_streaming)
    make = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[kind]
    return make(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc.response_class.FromString)


async def call_rpc(channel: grpc.aio.Channel, rpc: Rpc, request: Message
                   ) -> tuple[grpc.StatusCode, str]:
    """The status the call ended with (a stream read for a while then cancelled counts OK)."""
    multicallable = _multicallable(channel, rpc)
    argument: Any = iter([request]) if rpc.method.client_streaming else request
    try:
        if not rpc.method.server_streaming:
            await multicallable(argument, timeout=UNARY_SECONDS)
            return grpc.StatusCode.OK, ""
        call = multicallable(argument, timeout=STREAM_SECONDS)
        received = 0
        async for _ in call:
            received += 1
            if received >= STREAM_MESSAGES:
                call.cancel()
                break
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


def judge_rpc(report: Report, rpc: Rpc, request: Message, code: grpc.StatusCode,
              detail: str) -> None:
    ok = code in ALLOWED_CODES
    outcome = code.name
    if ok and len(detail) > DETAILS_LIMIT:
        ok, outcome = False, f"{code.name} (message over {DETAILS_LIMIT} chars)"
        detail = f"{len(detail)} chars: {detail}"
    report.record(rpc.name, outcome, ok, describe_request(request), detail)


async def call_http(session: aiohttp.ClientSession, base: str, case: HttpCase
                    ) -> tuple[int, str]:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    async with session.request(case.method, base + case.path, data=case.body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=UNARY_SECONDS)) as response:
        if response.content_type == "text/event-stream":
            return response.status, ""  # a live stream (the console's): its answer is enough
        body = await response.read()
        return response.status, body.decode("utf-8", "replace")


def judge_http(report: Report, case: HttpCase, status: int, body: str) -> None:
    ok = status in ALLOWED_HTTP
    outcome = f"HTTP {status}"
    if ok and status >= 400 and len(body) > DETAILS_LIMIT:
        ok, outcome = False, f"HTTP {status} (error body over {DETAILS_LIMIT} chars)"
        body = f"{len(body)} chars: {body}"
    report.record(f"{case.method} {case.path.split('?')[0][:40]}", outcome, ok,
                  describe_http(case), body)


def orchestrator_routes() -> tuple[str, ...]:
    """Every path the orchestrator's HTTP listener routes, read from the app itself, so a route
    added later (the console's, /workflows...) is fuzzed without a change here. `{name}` parts
    are filled by the strategy."""
    app = OrchestratorApp(OrchestratorSettings.model_validate({
        "server": {"grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"},
        "classes": {"cpu_short": {}}}))
    paths = {route.path for route in app.http_routes() if isinstance(route, web.RouteDef)}
    return tuple(sorted(paths.union(RUNTIME_ROUTES)))


# -- the daemons ----------------------------------------------------------------------------------


@dataclass
class Target:
    """A running daemon to fuzz, with what its seeded state looked like before."""

    daemon: DaemonProcess
    rpcs: list[Rpc]
    routes: tuple[str, ...]
    seed: Callable[[grpc.aio.Channel], Coroutine[Any, Any, dict[str, Any]]]
    snapshot: Callable[[grpc.aio.Channel, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
    #: known-hostile cases (issue 10's findings), sent one after the other before the random
    #: ones, so each run tries them whatever hypothesis draws
    regressions: list[tuple[Rpc, Message] | HttpCase] = field(default_factory=list)
    seeded: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, sort_keys=True)


def _stable_task(status: Message) -> dict[str, Any]:
    """What fuzzing must not change about a task. With no env-manager answering, a queued task
    may go from pending to running and back (dispatch attempts), so both read as queued."""
    found = json.loads(_json(status))
    for volatile in ("attempts", "error", "started_at"):
        found.pop(volatile, None)
    if found.get("status") in ("pending", "running"):
        found["status"] = "queued"
    return found  # type: ignore[no-any-return]


async def seed_orchestrator(channel: grpc.aio.Channel) -> dict[str, Any]:
    """Tasks (queued, one cancelled) and a workflow with a run, all before the fuzzing."""
    pb = orchestrator_pb2
    stub = _stub(channel, orchestrator_pb2, "OrchestratorService")
    tag = uuid.uuid4().hex[:10]
    tasks = [f"seed-{tag}-{n}" for n in range(4)]
    for n, task_id in enumerate(tasks):
        request = pb.SubmitTaskRequest(id=task_id, payload={"command": f"echo seed {n}"},
                                       priority=n)
        setattr(request, "class", "cpu_short")
        await stub.SubmitTask(request, timeout=UNARY_SECONDS)
    await stub.CancelTask(pb.CancelTaskRequest(task_id=tasks[-1]), timeout=UNARY_SECONDS)
    spec = json.dumps({"steps": [
        {"id": "a", "payload": {"command": "echo {{ input.x }}"}},
        {"id": "b", "depends_on": ["a"],
         "payload": {"command": "echo {{ steps.a.result.stdout }}"}},
    ]}).encode()
    workflow = f"seedwf-{tag}"
    created = await stub.CreateWorkflow(pb.CreateWorkflowRequest(
        id=workflow, name="seed", description="seeded before fuzzing", spec=spec),
        timeout=UNARY_SECONDS)
    run = await stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
        workflow_id=workflow, idempotency_key=f"seed-{tag}", input={"x": "1"}),
        timeout=UNARY_SECONDS)
    # Settle: every seeded task and the run reach their end (refused: the image is absent).
    async for _ in stub.StreamTaskResults(pb.StreamTaskResultsRequest(
            task_ids=tasks, include_completed=True), timeout=120):
        pass
    async for _ in stub.StreamWorkflowStatus(pb.StreamWorkflowStatusRequest(run_id=run.run_id),
                                             timeout=120):
        pass
    return {"tasks": tasks, "workflow": workflow, "spec": spec, "version": created.version,
            "run_key": f"seed-{tag}", "run_id": run.run_id}


async def snapshot_orchestrator(channel: grpc.aio.Channel, seeded: dict[str, Any]
                                ) -> dict[str, Any]:
    pb = orchestrator_pb2
    stub = _stub(channel, orchestrator_pb2, "OrchestratorService")
    found: dict[str, Any] = {}
    for task_id in seeded["tasks"]:
        found[task_id] = _stable_task(await stub.GetTaskStatus(
            pb.GetTaskStatusRequest(task_id=task_id), timeout=UNARY_SECONDS))
    again = await stub.CreateWorkflow(pb.CreateWorkflowRequest(
        id=seeded["workflow"], name="seed", description="seeded before fuzzing",
        spec=seeded["spec"]), timeout=UNARY_SECONDS)
    found["workflow version"] = again.version
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), timeout=UNARY_SECONDS)
    found["workflow listed"] = [_json(w) for w in listed.workflows
                                if w.workflow_id == seeded["workflow"]]
    run = await stub.StartWorkflowRun(pb.StartWorkflowRunRequest(
        workflow_id=seeded["workflow"], idempotency_key=seeded["run_key"], input={"x": "1"}),
        timeout=UNARY_SECONDS)
    found["run"] = (run.run_id, run.created)
    call = stub.StreamWorkflowStatus(pb.StreamWorkflowStatusRequest(run_id=seeded["run_id"]),
                                     timeout=UNARY_SECONDS)
    async for update in call:
        found["run status"] = (update.run_id, update.status in ("pending", "running"),
                               update.steps_completed, update.total_steps, update.error)
        call.cancel()
        break
    return found


async def seed_env_manager(channel: grpc.aio.Channel) -> dict[str, Any]:
    """One task really run (its stored result must stay the same) and the registry's service."""
    task_id = f"seed-{uuid.uuid4().hex[:10]}"
    stub = _stub(channel, env_manager_pb2, "EnvManagerService")
    first = await stub.ExecuteTask(env_manager_pb2.ExecuteTaskRequest(
        task_id=task_id, workload_class="cpu_short", payload={"command": "echo seeded"},
        timeout_seconds=60), timeout=120)
    assert first.success, first.error
    return {"task_id": task_id}


async def snapshot_env_manager(channel: grpc.aio.Channel, seeded: dict[str, Any]
                               ) -> dict[str, Any]:
    stub = _stub(channel, env_manager_pb2, "EnvManagerService")
    again = await stub.ExecuteTask(env_manager_pb2.ExecuteTaskRequest(
        task_id=seeded["task_id"], workload_class="cpu_short",
        payload={"command": "echo seeded"}, timeout_seconds=60), timeout=120)
    result = dict(again.result)
    status = await stub.GetServicesStatus(
        env_manager_pb2.GetServicesStatusRequest(service_names=["fz"]), timeout=UNARY_SECONDS)
    return {"task": (again.success, again.error, result.get("stdout"), result.get("exit_code")),
            "services": sorted(status.services)}


def _stub(channel: grpc.aio.Channel, module: Any, service: str) -> Any:
    grpc_module = __import__(module.__name__ + "_grpc", fromlist=["_"])
    return getattr(grpc_module, f"{service}Stub")(channel)


def _deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def orchestrator_regressions() -> list[tuple[Rpc, Message] | HttpCase]:
    """Issue 10's inputs: deep step payloads then a run (finding 1), non-ASCII digits and
    5,000-digit numbers in page tokens, payload controls, specs and HTTP bodies, priorities past
    int64 (finding 11)."""
    by_name = {rpc.name: rpc for rpc in rpcs(orchestrator_pb2.DESCRIPTOR)}
    pb = orchestrator_pb2
    cases: list[tuple[Rpc, Message] | HttpCase] = []
    for depth in (500, 900, 950):
        for kind in ("list", "object"):
            workflow = f"deep-{kind}-{depth}"
            spec = '{"steps":[{"id":"a","payload":{"x":' + _deep(depth, kind) + "}}]}"
            cases.append((by_name["CreateWorkflow"],
                          pb.CreateWorkflowRequest(id=workflow, spec=spec.encode())))
            cases.append((by_name["StartWorkflowRun"],
                          pb.StartWorkflowRunRequest(workflow_id=workflow)))
    for number in ("²", "٣", "9" * 5000, str(2**63), str(2**70)):
        cases.append((by_name["ListTasks"], pb.ListTasksRequest(page_token=number)))
        for key in ("timeout_seconds", "max_attempts"):
            request = pb.SubmitTaskRequest(id=f"num-{key}-{len(number)}-{ord(number[0])}",
                                           payload={"command": "true", key: number})
            cases.append((by_name["SubmitTask"], request))
        spec = '{"steps":[{"id":"a","priority":' + number + "}]}" if number.isascii() else \
            '{"steps":[{"id":"a","timeout_seconds":"' + number + '"}]}'
        cases.append((by_name["CreateWorkflow"], pb.CreateWorkflowRequest(
            id=f"num-{len(number)}-{ord(number[0])}", spec=spec.encode())))
        body = '{"id":"http-' + str(len(number)) + '","priority":' + (
            number if number.isascii() else '"' + number + '"') + "}"
        cases.append(HttpCase("POST", "/queue/submit", body.encode(), "application/json"))
    for depth in (900, 1000, 3000):
        for kind in ("list", "object"):
            body = '{"id":"deep","payload":{"x":' + _deep(depth, kind) + "}}"
            cases.append(HttpCase("POST", "/queue/submit", body.encode(), "application/json"))
    return cases


@contextlib.asynccontextmanager
async def orchestrator_target(workdir: Path) -> AsyncIterator[Target]:
    """The orchestrator, dispatching to an env-manager whose classes name an absent image: every
    task is dispatched (payload keys read, templates rendered) and refused, nothing runs."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the daemons)
    stack = stack_name()
    em_config = workdir / f"{stack}.toml"
    em_config.write_text(
        f'[stack]\nname = "{stack}"\n' + "".join(
            f'[workload_classes.{name}]\nimage = "{ABSENT_IMAGE_PREFIX}:never"\n'
            f"concurrency = {concurrency}\n"
            for name, concurrency in (("cpu_short", 4), ("cpu_long", 2), ("gpu", 0))))
    config = workdir / "orchestrator-fuzz.toml"
    config.write_text('[dispatch]\nretry_initial = "200ms"\nretry_max = "2s"\n'
                      'availability_check = "500ms"\n')
    try:
        async with running_daemon("env-manager", workdir, args=[
                "--config", str(em_config), "--state-dir", str(workdir / "env-manager-state")
        ]) as env_manager, running_daemon("orchestrator", workdir, args=[
                "--config", str(config), "--data-dir", str(workdir / "orchestrator-data"),
                "--env-managers", env_manager.grpc_addr]) as daemon:
            yield Target(daemon, rpcs(orchestrator_pb2.DESCRIPTOR), orchestrator_routes(),
                         seed_orchestrator, snapshot_orchestrator, orchestrator_regressions())
    finally:
        await remove_stack_containers(stack)


@contextlib.asynccontextmanager
async def env_manager_target(workdir: Path) -> AsyncIterator[Target]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the daemon)
    stack = stack_name()
    config = workdir / f"{stack}.toml"
    config.write_text(
        f'[stack]\nname = "{stack}"\nmax_concurrent = 4\nhealth_timeout = "5s"\n'
        f'[workload_classes.cpu_short]\nimage = "{TEST_IMAGE}"\nconcurrency = 4\n'
        f'[services.fz]\nimage = "{ABSENT_IMAGE_PREFIX}:never"\ncommand = "sleep 1d"\n'
        f'stop_grace = "1s"\n')
    try:
        async with running_daemon("env-manager", workdir, args=[
                "--config", str(config), "--state-dir", str(workdir / "env-manager-state")
        ]) as daemon:
            yield Target(daemon, rpcs(env_manager_pb2.DESCRIPTOR), ENV_MANAGER_ROUTES,
                         seed_env_manager, snapshot_env_manager)
    finally:
        await remove_stack_containers(stack)


# -- health ---------------------------------------------------------------------------------------


def alive(daemon: DaemonProcess) -> bool:
    """Whether the daemon's process still runs (read from /proc: the loop that owns the process
    object may be idle while the fuzzing runs on another)."""
    try:
        stat = Path(f"/proc/{daemon.process.pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def health_problems(target: Target, channel: grpc.aio.Channel,
                          http: aiohttp.ClientSession) -> list[str]:
    daemon = target.daemon
    if not alive(daemon):
        return [f"{daemon.name} is gone; log tail:\n{daemon.log_text()[-3000:]}"]
    problems = []
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=UNARY_SECONDS)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"grpc.health.v1 Check: {reply.status}")
    except grpc.aio.AioRpcError as exc:
        problems.append(f"grpc.health.v1 Check: {exc.code().name} {exc.details()}")
    try:
        async with http.get(f"{daemon.http_url}/health",
                            timeout=aiohttp.ClientTimeout(total=UNARY_SECONDS)) as response:
            if response.status != 200:
                problems.append(f"/health: HTTP {response.status} {await response.text()}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        problems.append(f"/health: {type(exc).__name__} {exc}")
    return problems


# -- the run --------------------------------------------------------------------------------------


class Pipeline:
    """Calls in flight, bounded: unary calls and streams each by their own semaphore."""

    def __init__(self, target: Target, report: Report, http: aiohttp.ClientSession,
                 channel: grpc.aio.Channel) -> None:
        self.target, self.report, self.http, self.channel = target, report, http, channel
        self.unary = asyncio.Semaphore(UNARY_IN_FLIGHT)
        self.streams = asyncio.Semaphore(STREAMS_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    async def submit(self, work: Callable[[], Awaitable[None]], stream: bool) -> None:
        limit = self.streams if stream else self.unary
        await limit.acquire()

        async def run() -> None:
            try:
                await work()
            finally:
                limit.release()

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.sent += 1
        if self.sent % HEALTH_EVERY == 0:
            await self.check_alive()

    async def rpc(self, rpc: Rpc, request: Message) -> None:
        async def work() -> None:
            code, detail = await call_rpc(self.channel, rpc, request)
            judge_rpc(self.report, rpc, request, code, detail)
        await self.submit(work, rpc.method.server_streaming)

    async def http_case(self, case: HttpCase) -> None:
        async def work() -> None:
            try:
                status, body = await call_http(self.http, self.target.daemon.http_url, case)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.report.record(f"{case.method} {case.path[:40]}", type(exc).__name__, False,
                                   describe_http(case), str(exc))
                return
            judge_http(self.report, case, status, body)
        await self.submit(work, False)

    async def check_alive(self) -> None:
        daemon = self.target.daemon
        if not alive(daemon) and not self.report.problems:
            self.report.problems.append(
                f"{daemon.name} died during the run (after about {self.sent} cases); "
                f"log tail:\n{daemon.log_text()[-3000:]}")

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))


class LoopThread:
    """An event loop running in a thread of its own: hypothesis generates the next case in this
    thread while the calls in flight make progress there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def run_fuzz(target: Target, *, grpc_cases: int, http_cases_count: int,
             progress: Callable[[Report], None] | None = None) -> Report:
    """Seed, fuzz (gRPC cases, then HTTP ones), check health and the seeded state: the report.

    Synchronous (hypothesis' examples are): the calls run on a LoopThread of their own.
    """
    report = Report(target.daemon.name)
    runner = LoopThread()
    channel = runner.run(_channel(target.daemon.grpc_addr))
    http = runner.run(_session())
    try:
        target.seeded = runner.run(target.seed(channel))
        target.before = runner.run(target.snapshot(channel, target.seeded))
        pipeline = Pipeline(target, report, http, channel)
        began = time.monotonic()
        for case in target.regressions:  # in order: a run follows its workflow's creation
            if isinstance(case, HttpCase):
                runner.run(pipeline.http_case(case))
            else:
                runner.run(pipeline.rpc(*case))
            runner.run(pipeline.drain())

        @fuzz_settings(grpc_cases)
        @given(rpc_cases(target.rpcs))
        def grpc_example(case: tuple[Rpc, Message]) -> None:
            runner.run(pipeline.rpc(*case))
            if progress is not None and pipeline.sent % 1000 == 0:
                progress(report)

        @fuzz_settings(http_cases_count)
        @given(http_cases(target.routes))
        def http_example(case: HttpCase) -> None:
            runner.run(pipeline.http_case(case))

        if grpc_cases:
            grpc_example()
        if http_cases_count:
            http_example()
        runner.run(pipeline.drain())
        report.seconds = time.monotonic() - began
        runner.run(pipeline.check_alive())
        if not report.problems:
            report.problems += runner.run(health_problems(target, channel, http))
        if not report.problems:
            after = runner.run(target.snapshot(channel, target.seeded))
            for key in sorted(set(target.before) | set(after)):
                if target.before.get(key) != after.get(key):
                    report.problems.append(f"seeded state changed: {key}: "
                                           f"{target.before.get(key)!r} -> {after.get(key)!r}")
    finally:
        runner.run(http.close())
        runner.run(channel.close())
        runner.close()
    return report


async def _channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)  # made on the loop that will use it


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def every_wire_service() -> set[str]:
    """The full names of the services the generated modules in agent_infra.wire declare."""
    import importlib
    import pkgutil

    import agent_infra.wire as wire
    names: set[str] = set()
    for module in pkgutil.iter_modules(wire.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"agent_infra.wire.{module.name}").DESCRIPTOR
            names.update(s.full_name for s in descriptor.services_by_name.values())
    return names


FUZZED_SERVICES = frozenset(
    rpc.service for rpc in rpcs(orchestrator_pb2.DESCRIPTOR) + rpcs(env_manager_pb2.DESCRIPTOR))


def assert_clean(reports: Sequence[Report]) -> None:
    """Fails listing every failure and problem of every report."""
    bad = [report for report in reports if not report.ok]
    if bad:
        pytest.fail("\n\n".join(report.text() for report in bad), pytrace=False)


__all__ = ["ALLOWED_CODES", "ALLOWED_HTTP", "FUZZED_SERVICES", "Report", "Target",
           "assert_clean", "env_manager_target", "every_wire_service", "orchestrator_target",
           "run_fuzz"]
