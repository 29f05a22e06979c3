"""The original runner's `execution` section, and domain payloads run by the class's handler.

Which form a payload is (payload_form):
- it has `execution`: the section below; besides it only `workflow_id`, `tenant` and `artifacts`;
- it has `command`, or only our own keys (command, image, env, stdin, workdir): tasks/payload.py;
- otherwise it is a domain payload ({"task_type": ..., "session_id": ...}) for the class's
  `handler`; a class without one refuses it (INVALID_ARGUMENT saying which keys are expected).

`execution` (a JSON object; over gRPC the value of payload["execution"] is its JSON text):
  image              one of the class's allowed_images; absent: the class's image (never the host)
  command            a non-empty list of strings, run as is; or a string, run by /bin/sh -c
  env                {"NAME": "value"} (numbers and booleans become their JSON text)
  timeout_seconds    > 0; the task runs for the smaller of it and the request's timeout_seconds
                     (when that is > 0), capped at the class's max_timeout
  container_workdir  an absolute path inside the container to run in
  resources          cpu_millicores -> CPU limit, mem_bytes -> memory limit, gpu_count -> GPUs;
                     each capped at the class's (cpus, memory, gpus); the result's warnings say
                     when one was capped. gpu_class, gpu_memory_gb, storage_gb are not honoured.
  mounts             [{"host_path", "mount_path", "read_only"}]: host_path must be exactly one
                     the class's `mounts` grant (a path under it is refused: a symlink there
                     could lead anywhere); read_only absent means the grant's mode, false on a
                     read-only grant is refused. Anything else is INVALID_ARGUMENT naming it.
  working_dir        a host path in the original; not honoured (tasks never run on the host):
                     the result's `warnings` says so.
`artifacts` (beside `execution`): {"outputs": [{"path": "out/metrics.json", "type": "json"}]};
  outputs of type json or named *.json are read back after the exit when the class has a
  `results_dir`: each path is relative to it (no `..`, no leading /: INVALID_ARGUMENT), the task
  runs there unless container_workdir says otherwise (so the original's relative paths land
  there), and AGENT_INFRA_RESULTS_DIR names it. Without a results_dir, or for other outputs,
  the result's `warnings` says they were not read. `inputs` are not used.
Unknown keys in `execution` are ignored and named in `warnings`, as the original ignored them.
Nothing here loosens the class's hardening: the user, cap_drop ALL, no-new-privileges, the
network, the pids limit, and memory/CPU/GPUs never above the class's.

A handler run gets the whole payload as a JSON object (each value decoded from JSON when it is
JSON, else kept as the string sent) on stdin and in /run/agent-infra/payload.json (mode 0444,
owned by the class's user, put into the container before it starts), and the environment
variables AGENT_INFRA_TASK_ID (the execution id), AGENT_INFRA_TASK_CLASS, AGENT_INFRA_ATTEMPT
(from ExecuteTaskRequest.attempt; 1 when not sent) and AGENT_INFRA_PAYLOAD_FILE.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from agent_infra.runtime.artifacts import json_outputs
from agent_infra.runtime.errors import InvalidArgument

from .payload import (
    PAYLOAD_KEYS,
    SHELL,
    TaskSpec,
    parse_env,
    parse_workdir,
    request_key,
)
from .workloads import WorkloadClass, parse_mount

ENVELOPE_KEYS = ("execution", "workflow_id", "tenant", "artifacts")
EXECUTION_KEYS = ("image", "command", "env", "mounts", "resources", "timeout_seconds",
                  "working_dir", "container_workdir")
RESOURCE_KEYS = ("cpu_millicores", "mem_bytes", "gpu_count")
UNHONOURED_RESOURCES = ("gpu_class", "gpu_memory_gb", "storage_gb")
PAYLOAD_FILE = "/run/agent-infra/payload.json"
MAX_EXTRA_BYTES = 16 * 1024


def payload_form(payload: Mapping[str, str], workload: WorkloadClass,
                 workload_class: str) -> str:
    """"execution", "command" (our own keys) or "handler"; InvalidArgument when none fits."""
    if "execution" in payload:
        unknown = sorted(set(payload) - set(ENVELOPE_KEYS))
        if unknown:
            raise InvalidArgument(
                f"a payload with `execution` takes only {', '.join(ENVELOPE_KEYS)}; it also has "
                f"{', '.join(repr(k[:80]) for k in unknown[:10])}")
        return "execution"
    if "command" in payload:
        return "command"
    if workload.handler is not None:
        return "handler"
    if set(payload) <= set(PAYLOAD_KEYS):
        return "command"  # the image's own CMD runs
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    raise InvalidArgument(
        f"payload has unknown key(s) {', '.join(repr(k[:80]) for k in unknown[:10])} (neither "
        f"`execution` nor `command`, and workload_class {workload_class!r} has no handler for "
        "such payloads; expected keys: `execution` (a JSON object: image, command, env, "
        "timeout_seconds, container_workdir, resources, mounts) with optional workflow_id, "
        f"tenant, artifacts; or {', '.join(PAYLOAD_KEYS)})")


def decode(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidArgument(f"{what} nests JSON too deeply") from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON ({str(exc)[:200]})") from None


def spec_for_execution(task_id: str, workload_class: str, workload: WorkloadClass,
                       payload: Mapping[str, str], timeout_seconds: int, caller: str,
                       attempt: int) -> TaskSpec:
    section = decode(payload["execution"], "payload.execution")
    if not isinstance(section, dict):
        raise InvalidArgument("payload.execution must be a JSON object such as "
                              "{\"image\": ..., \"command\": [\"python\", \"-c\", \"...\"]}")
    warnings: list[str] = []
    unknown = sorted(set(section) - set(EXECUTION_KEYS))
    if unknown:
        warnings.append(f"execution key(s) ignored: {', '.join(k[:80] for k in unknown[:10])}")
    image = section.get("image") or workload.image
    if not isinstance(image, str) or image not in workload.allowed_images:
        raise InvalidArgument(
            f"execution.image {image!r:.200} is not allowed for workload_class "
            f"{workload_class!r}; allowed: {', '.join(workload.allowed_images)}")
    command = _command(section.get("command"))
    env = {**workload.env, **_env(section.get("env")), **_task_env(task_id, workload_class,
                                                                   attempt)}
    workdir = section.get("container_workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise InvalidArgument("execution.container_workdir must be an absolute path string")
    if section.get("working_dir"):
        warnings.append("execution.working_dir is a host path and is not honoured: tasks run in "
                        "containers only (use container_workdir)")
    timeout, capped = _timeout(section.get("timeout_seconds"), timeout_seconds, workload)
    nano_cpus, memory, gpus = _resources(section.get("resources"), workload, warnings)
    mounts = _mounts(section.get("mounts"), workload, workload_class)
    outputs = json_outputs(payload.get("artifacts"))
    dirs: tuple[str, ...] = ()
    results_dir = workload.results_dir
    if results_dir is not None:
        dirs = (results_dir,)
        env["AGENT_INFRA_RESULTS_DIR"] = results_dir
        if workdir is None:
            workdir = results_dir
    elif outputs:
        warnings.append(f"artifacts.outputs not read: workload_class {workload_class!r} grants "
                        "no results_dir")
        outputs = ()
    return TaskSpec(
        task_id=task_id, workload_class=workload_class, image=image, command=command,
        env=tuple(env.items()), stdin=None, workdir=parse_workdir(workdir),
        timeout=timeout, timeout_capped=capped,
        request_key=request_key(workload_class, payload, image, caller),
        mode="execution", nano_cpus=nano_cpus, memory=memory, gpus=gpus, mounts=mounts,
        file_owner=_owner(workload.user), dirs=dirs,
        outputs=tuple((name, posixpath.join(results_dir, path)) for name, path in outputs
                      if results_dir is not None),
        extras=_extras(payload, warnings),
    )


def spec_for_handler(task_id: str, workload_class: str, workload: WorkloadClass,
                     payload: Mapping[str, str], timeout_seconds: int, caller: str,
                     attempt: int) -> TaskSpec:
    handler = workload.handler
    assert handler is not None
    document = {key: _maybe_json(value) for key, value in payload.items()}
    data = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    env = {**workload.env, **handler.env, **_task_env(task_id, workload_class, attempt),
           "AGENT_INFRA_PAYLOAD_FILE": PAYLOAD_FILE}
    timeout, capped = _timeout(None, timeout_seconds, workload)
    return TaskSpec(
        task_id=task_id, workload_class=workload_class, image=handler.image,
        command=tuple(handler.command), env=tuple(env.items()), stdin=data, workdir=None,
        timeout=timeout, timeout_capped=capped,
        request_key=request_key(workload_class, payload, handler.image, caller),
        mode="handler", files=((PAYLOAD_FILE, data),), file_owner=_owner(workload.user),
        extras=_extras(payload, []),
    )


def _owner(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _task_env(task_id: str, workload_class: str, attempt: int) -> dict[str, str]:
    return {"AGENT_INFRA_TASK_ID": task_id, "AGENT_INFRA_TASK_CLASS": workload_class,
            "AGENT_INFRA_ATTEMPT": str(max(1, attempt))}


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value.strip():
        return (*SHELL, value)
    if (isinstance(value, list) and value and all(isinstance(part, str) for part in value)
            and all("\0" not in part for part in value)):
        return tuple(value)
    raise InvalidArgument("execution.command must be a non-empty list of strings such as "
                          "[\"python\", \"train.py\"] (or a shell command line as one string)")


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("execution.env must be an object such as {\"NAME\": \"value\"}")
    converted = {key: item if isinstance(item, str) else json.dumps(item)
                 for key, item in value.items()
                 if isinstance(item, str | int | float | bool)}
    if len(converted) != len(value):
        bad = next(key for key in value if key not in converted)
        raise InvalidArgument(f"execution.env[{bad!r:.80}] must be a string, number or boolean")
    return parse_env(json.dumps(converted))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidArgument(f"{what} must be a number >= 0; got {json.dumps(value)[:80]}")
    return float(value)


def _timeout(asked: Any, requested: int, workload: WorkloadClass) -> tuple[float, bool]:
    candidates = [float(requested)] if requested > 0 else []
    if asked is not None:
        seconds = _number(asked, "execution.timeout_seconds")
        if seconds > 0:
            candidates.append(seconds)
    wanted = min(candidates) if candidates else workload.default_timeout
    return min(wanted, workload.max_timeout), wanted > workload.max_timeout


def _resources(value: Any, workload: WorkloadClass,
               warnings: list[str]) -> tuple[int | None, int | None, int | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        raise InvalidArgument("execution.resources must be an object such as "
                              "{\"cpu_millicores\": 1000, \"mem_bytes\": 268435456}")
    nano_cpus = memory = gpus = None
    if value.get("cpu_millicores"):
        wanted = int(_number(value["cpu_millicores"], "execution.resources.cpu_millicores")
                     * 1_000_000)
        cap = int(workload.cpus * 1e9) if workload.cpus is not None else None
        nano_cpus = wanted if cap is None else min(wanted, cap)
        if nano_cpus != wanted:
            warnings.append(f"resources.cpu_millicores capped at the class's "
                            f"{workload.cpus:g} CPUs")
    if value.get("mem_bytes"):
        wanted = int(_number(value["mem_bytes"], "execution.resources.mem_bytes"))
        memory = max(6 * 1024 * 1024, min(wanted, workload.memory))  # the engine's minimum
        if wanted > workload.memory:
            warnings.append(f"resources.mem_bytes capped at the class's {workload.memory} bytes")
    if "gpu_count" in value:
        wanted = int(_number(value["gpu_count"], "execution.resources.gpu_count"))
        gpus = min(wanted, workload.gpus)
        if wanted > workload.gpus:
            warnings.append(f"resources.gpu_count capped at the class's {workload.gpus} GPUs")
    ignored = [key for key in value if key not in RESOURCE_KEYS and value[key] not in (None, "")]
    if ignored:
        warnings.append(f"resources not honoured: {', '.join(k[:40] for k in ignored[:10])}")
    return nano_cpus, memory, gpus


def _mounts(value: Any, workload: WorkloadClass, workload_class: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidArgument("execution.mounts must be a list of {host_path, mount_path, "
                              "read_only}")
    granted = {source: (target, mode) for source, target, mode in map(parse_mount,
                                                                      workload.mounts)}
    targets = {target for target, _ in granted.values()}
    binds: list[str] = []
    for index, mount in enumerate(value):
        what = f"execution.mounts[{index}]"
        if not isinstance(mount, dict):
            raise InvalidArgument(f"{what} must be an object {{host_path, mount_path, read_only}}")
        source, target = mount.get("host_path"), mount.get("mount_path") or mount.get("host_path")
        if not isinstance(source, str) or source not in granted:
            raise InvalidArgument(
                f"{what}: host_path {source!r:.200} is not granted to workload_class "
                f"{workload_class!r}; granted host paths: {', '.join(granted) or 'none'}")
        if (not isinstance(target, str) or not target.startswith("/") or target == "/"
                or posixpath.normpath(target) != target.rstrip("/") or "\0" in target):
            raise InvalidArgument(f"{what}: mount_path must be an absolute, normalised path "
                                  f"other than /; got {target!r:.200}")
        granted_target, mode = granted[source]
        read_only = mount.get("read_only")
        if read_only is False and mode == "ro":
            raise InvalidArgument(f"{what}: host_path {source!r} is granted read-only to "
                                  f"workload_class {workload_class!r}; read_only false refused")
        if read_only is not None and not isinstance(read_only, bool):
            raise InvalidArgument(f"{what}: read_only must be true or false")
        if target == granted_target:
            continue  # the class mounts it there already
        if target in targets:
            raise InvalidArgument(f"{what}: mount_path {target!r} is where the class mounts "
                                  "another host path")
        binds.append(f"{source}:{target}:{'ro' if read_only or mode == 'ro' else 'rw'}")
        targets.add(target)
    return tuple(binds)


def _extras(payload: Mapping[str, str], warnings: list[str]) -> tuple[tuple[str, str], ...]:
    extras = []
    for key in ("workflow_id", "tenant"):
        value = payload.get(key)
        if value:
            decoded = _maybe_json(value)
            extras.append((key, decoded if isinstance(decoded, str) else value))
    if warnings:
        extras.append(("warnings", json.dumps(warnings)))
    return tuple((key, value[:MAX_EXTRA_BYTES]) for key, value in extras)
