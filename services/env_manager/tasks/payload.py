"""Checking an ExecuteTask request and turning it into what the container will run.

A payload is read in one of three forms (tasks/modes.py has the other two):
- `execution` present: the original runner's section (a JSON object as text), tasks/modes.py;
- `command` present, or only the keys below: our own form, described here;
- anything else (a domain payload such as {"task_type": ..., "session_id": ...}): the class's
  `handler` runs it; a class without one refuses it with INVALID_ARGUMENT naming the forms.

Our own form's keys (all optional; any other key is rejected unless the class has a handler):

  command  a JSON array of strings, run as is (["python", "-c", "print(1)"]); or any other text,
           run by the image's shell as `/bin/sh -c TEXT` (a JSON-encoded string is decoded
           first). Without it the image's own CMD/ENTRYPOINT runs.
  image    the image to run; must be one of the class's allowed_images. Default: the class image.
           Never pulled: a missing image is FAILED_PRECONDITION.
  env      a JSON object of strings, {"NAME": "value"}, added over the class's env.
  stdin    text written to the process's standard input, followed by end-of-file.
  workdir  an absolute path inside the container to run in.

timeout_seconds: > 0 asks for that many seconds, 0 means the class's default_timeout; either is
capped at the class's max_timeout (the result then says timeout_capped=true).

A task id is bound to its request: `request_key` digests the workload class, the payload as sent
and the image it resolves to, and the caller's identity (a hash of the bearer token the call
carried, never the token; empty without one). The same request re-sent (a retry) attaches to
the run or gets its stored result; any other request with the id is ALREADY_EXISTS.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from agent_infra.runtime.errors import FailedPrecondition, InvalidArgument

from .workloads import WorkloadClass

PAYLOAD_KEYS = ("command", "image", "env", "stdin", "workdir")
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    workload_class: str
    image: str
    command: tuple[str, ...] | None  # None: the image's default
    env: tuple[tuple[str, str], ...]
    stdin: bytes | None
    workdir: str | None
    timeout: float
    timeout_capped: bool
    request_key: str = ""
    mode: str = "command"  # "command", "execution" or "handler"
    # Per-task limits inside the class's (None: the class's own).
    nano_cpus: int | None = None
    memory: int | None = None
    gpus: int | None = None
    mounts: tuple[str, ...] = ()  # extra engine binds "src:dst:ro|rw" the class grants
    files: tuple[tuple[str, bytes], ...] = ()  # (absolute path, content) put before the start
    file_owner: tuple[int, int] = (65534, 65534)  # uid, gid of `files`: the class's user
    dirs: tuple[str, ...] = ()  # absolute paths made (0700, file_owner's) before the start
    # Declared JSON output artifacts read back after the exit: (file name, absolute path).
    outputs: tuple[tuple[str, str], ...] = ()
    # Echoed in the result: warnings (what was not honoured), workflow_id, tenant, artifacts.
    extras: tuple[tuple[str, str], ...] = ()


def caller_identity(token: str | None) -> str:
    """Who a call comes from, as stored: a hash of its bearer token ("" without one)."""
    if not token:
        return ""
    return hashlib.sha256(b"agent-infra env-manager caller\0" + token.encode()).hexdigest()


def request_key(workload_class: str, payload: Mapping[str, str], image: str,
                caller: str) -> str:
    """The digest a task id's request is bound to (see the module docstring)."""
    canonical = json.dumps([workload_class, sorted(payload.items()), image, caller],
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def check_task_id(task_id: str) -> str:
    if not TASK_ID_PATTERN.fullmatch(task_id):
        raise InvalidArgument("task_id must be 1-128 characters of letters, digits and - _ . : ; "
                              f"got {task_id!r:.140}")
    return task_id


def check_class(name: str, classes: Mapping[str, WorkloadClass], *,
                allow_disabled: bool = False) -> WorkloadClass:
    workload = classes.get(name)
    if workload is None:
        known = ", ".join(sorted(classes)) or "none configured"
        raise InvalidArgument(f"workload_class {name!r:.80} is unknown; known classes: {known}")
    if workload.concurrency == 0 and not allow_disabled:
        raise FailedPrecondition(
            f"workload_class {name!r} is disabled on this host (concurrency 0)")
    return workload


def parse_request(task_id: str, workload_class: str, payload: Mapping[str, str],
                  timeout_seconds: int, classes: Mapping[str, WorkloadClass],
                  caller: str = "", attempt: int = 0) -> TaskSpec:
    """A runnable TaskSpec, or InvalidArgument/FailedPrecondition naming the field at fault."""
    from .modes import payload_form, spec_for_execution, spec_for_handler

    check_task_id(task_id)
    workload = check_class(workload_class, classes)
    if timeout_seconds < 0:
        raise InvalidArgument(f"timeout_seconds must be 0 (class default) or positive; "
                              f"got {timeout_seconds}")
    form = payload_form(payload, workload, workload_class)
    if form == "execution":
        return spec_for_execution(task_id, workload_class, workload, payload, timeout_seconds,
                                  caller, attempt)
    if form == "handler":
        return spec_for_handler(task_id, workload_class, workload, payload, timeout_seconds,
                                caller, attempt)
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    if unknown:
        raise InvalidArgument(f"payload has unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"allowed keys: {', '.join(PAYLOAD_KEYS)} (or `execution`, "
                              "or a domain payload for a class with a handler)")
    image = payload.get("image") or workload.image
    if image not in workload.allowed_images:
        raise InvalidArgument(
            f"payload.image {image!r:.200} is not allowed for workload_class {workload_class!r}; "
            f"allowed: {', '.join(workload.allowed_images)}")
    wanted = float(timeout_seconds) if timeout_seconds > 0 else workload.default_timeout
    env = {**workload.env, **parse_env(payload.get("env"))}
    stdin = payload.get("stdin")
    return TaskSpec(
        task_id=task_id,
        workload_class=workload_class,
        image=image,
        command=parse_command(payload.get("command")),
        env=tuple(env.items()),
        stdin=stdin.encode() if stdin is not None else None,
        workdir=parse_workdir(payload.get("workdir")),
        timeout=min(wanted, workload.max_timeout),
        timeout_capped=wanted > workload.max_timeout,
        request_key=request_key(workload_class, payload, image, caller),
    )


def parse_command(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if not text.strip():
        raise InvalidArgument("payload.command is empty; give a JSON array of strings or a "
                              "shell command line")
    try:
        decoded = json.loads(text)
    except RecursionError:
        raise InvalidArgument("payload.command nests JSON arrays too deeply") from None
    except ValueError:
        # Not JSON: a shell command line such as `[ -f x ] && cat x`.
        return (*SHELL, text)
    if isinstance(decoded, list):
        if not decoded or not all(isinstance(part, str) for part in decoded):
            raise InvalidArgument("payload.command as a JSON array must be a non-empty list of "
                                  "strings, e.g. [\"echo\", \"hi\"]")
        return tuple(decoded)
    if isinstance(decoded, str):
        if not decoded.strip():
            raise InvalidArgument("payload.command is empty")
        return (*SHELL, decoded)
    # Other JSON scalars (`true`, `42`) are shell words too.
    return (*SHELL, text)


def parse_env(text: str | None) -> dict[str, str]:
    if text is None or not text.strip():
        return {}
    try:
        decoded = json.loads(text)
    except RecursionError:
        raise InvalidArgument("payload.env nests JSON too deeply") from None
    except ValueError as exc:
        raise InvalidArgument(f"payload.env is not valid JSON ({str(exc)[:200]}); expected an "
                              "object of strings such as {\"NAME\": \"value\"}") from None
    if not isinstance(decoded, dict):
        raise InvalidArgument("payload.env must be a JSON object of strings such as "
                              "{\"NAME\": \"value\"}")
    for key, value in decoded.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"payload.env has an invalid variable name {key!r:.80}")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"payload.env[{key!r:.80}] must be a string without NUL; "
                                  f"got {json.dumps(value)[:80]}")
    return decoded


def parse_workdir(text: str | None) -> str | None:
    if text is None or text == "":
        return None
    if not text.startswith("/") or "\0" in text:
        raise InvalidArgument(f"payload.workdir must be an absolute path; got {text!r:.200}")
    return text
