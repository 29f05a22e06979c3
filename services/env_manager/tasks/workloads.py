"""Workload classes (what ExecuteTask may run, and how) and the task settings.

A workload class is one `[workload_classes.NAME]` table of the TOML config. It is the whole
security boundary of ExecuteTask: a task can only pick an image from `allowed_images`, gets the
class's limits and network, and sees no host path except the class's `mounts`.

Secure by default: a task runs as `user` (numeric; default 65534:65534, nobody), with every
capability dropped except the class's explicit `cap_add`, with no-new-privileges, a pids limit
and a memory limit (defaults below when the class names none), and its `mounts` read-only unless
a mount says `:rw`. The Docker engine offers no nosuid/nodev for bind mounts (its Binds refuse
the flags; a local volume with `o=bind,nosuid` is a plain bind, as the kernel ignores them on
MS_BIND), so what they would prevent is held by the rest: without CAP_MKNOD no device node can
be made, without CAP_CHOWN/CAP_FOWNER/CAP_FSETID and as a non-root uid no root-owned setuid file
can be made in a mount, and no-new-privileges makes set-uid bits inert inside the container. An
rw mount whose host path is not itself mounted nosuid,nodev is logged as a warning at load.

With no `[workload_classes]` in the config, `default_workload_classes` sizes cpu_short, cpu_long
and gpu from the host. Their image is python:3.11-slim, a realistic general-purpose default; a
deployment is expected to name its own images (the tests and the offline demo use
local/busybox:latest).
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any, Self

from agent_infra.env_manager.registry import ByteSize
from agent_infra.runtime import Duration, Section
from pydantic import Field, model_validator

DEFAULT_IMAGE = "python:3.11-slim"
MIB = 1024 * 1024
DEFAULT_USER = "65534:65534"  # nobody:nogroup on most images; numeric, so no passwd lookup
DEFAULT_PIDS_LIMIT = 256
DEFAULT_MEMORY = 1024 * MIB
MAX_WARM = 64
DEFAULT_WARM_MAX_AGE = 600.0
_USER = re.compile(r"^\d{1,10}(:\d{1,10})?$")
_CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")


def parse_mount(text: str) -> tuple[str, str, str]:
    """("src", "dst", "ro"|"rw") from "src:dst[:ro|rw]"; both paths absolute; read-only unless
    the mount says rw."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected \"/host/path:/container/path[:ro|rw]\"; got {text!r}")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise ValueError(f"mount mode must be ro or rw; got {mode!r} in {text!r}")
    for path in (source, target):
        if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or "\0" in path:
            raise ValueError(f"mount paths must be absolute and normalised; got {text!r}")
    return source, target, mode


class Handler(Section):
    """What runs a payload that has neither `command` nor `execution` (a domain payload such as
    {"task_type": ..., "session_id": ...}): the operator's worker image and command. It gets the
    whole payload as JSON on stdin and in /run/agent-infra/payload.json (tasks/modes.py)."""

    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class SandboxLimits(Section):
    """`[workload_classes.NAME.sandbox]`: the class's sandbox sessions (sandboxes/)."""

    # Sandboxes of the class at once on this env-manager; 0 refuses CreateSandbox for it.
    max_sandboxes: int = Field(4, ge=0, le=1024)
    default_ttl: Duration = Field(3600.0, gt=0, description="lifetime when none is asked")
    max_ttl: Duration = Field(86400.0, gt=0)
    default_idle_timeout: Duration = Field(600.0, gt=0,
                                           description="deleted after this long unused")
    max_idle_timeout: Duration = Field(3600.0, gt=0)
    # Per exec and stream; the rest is drained and dropped (the exit says truncated).
    output_limit_bytes: int = Field(MIB, ge=0, le=64 * MIB)
    # PutFile content and GetFile answers; both travel in one gRPC message.
    max_file_bytes: int = Field(MIB, ge=1, le=3 * MIB)
    # The sandbox's working directory (0700, owned by the class's user); PutFile and GetFile
    # paths stay inside it. Under /tmp the sandbox's own user makes it, which spares a warm
    # sandbox the engine's archive API (sandboxes/provision.py).
    workdir: str = "/tmp/sandbox"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_ttl < self.default_ttl:
            raise ValueError(f"max_ttl ({self.max_ttl:g} s) is below default_ttl "
                             f"({self.default_ttl:g} s)")
        if self.max_idle_timeout < self.default_idle_timeout:
            raise ValueError(f"max_idle_timeout ({self.max_idle_timeout:g} s) is below "
                             f"default_idle_timeout ({self.default_idle_timeout:g} s)")
        target = self.workdir
        if (not target.startswith("/") or target == "/" or "\0" in target or ":" in target
                or posixpath.normpath(target) != target):
            raise ValueError(f"workdir must be an absolute, normalised container path other "
                             f"than /; got {target!r:.200}")
        return self


class WorkloadClass(Section):
    image: str = Field(DEFAULT_IMAGE, min_length=1,
                       description="image used when the payload names none")
    # The default image is always allowed, whether or not it is listed here.
    allowed_images: list[str] = Field(default_factory=list)
    cpus: float | None = Field(None, gt=0)
    # Always limited: a class that names none gets DEFAULT_MEMORY.
    memory: ByteSize = DEFAULT_MEMORY
    gpus: int = Field(0, ge=0)
    default_timeout: Duration = Field(300.0, gt=0)
    max_timeout: Duration = Field(3600.0, gt=0)
    # 0 disables the class, e.g. gpu on a host without GPUs.
    concurrency: int = Field(1, ge=0, le=1024)
    # Tasks get no network unless the class grants one.
    network_mode: str = Field("none", min_length=1)
    mounts: list[str] = Field(default_factory=list,
                              description="the only host paths tasks may see, "
                                          "\"src:dst[:ro|rw]\" (read-only unless rw)")
    env: dict[str, str] = Field(default_factory=dict)
    # Numeric "uid[:gid]": the image's own user (often root) is never used.
    user: str = Field(DEFAULT_USER, description="the uid[:gid] tasks run as")
    # Every capability is dropped; these (e.g. "NET_BIND_SERVICE") are given back.
    cap_add: list[str] = Field(default_factory=list)
    pids_limit: int = Field(DEFAULT_PIDS_LIMIT, ge=1, le=1_000_000)
    # Runs domain payloads (no command, no execution); without one they are INVALID_ARGUMENT.
    handler: Handler | None = None
    # A container path made fresh for each `execution` task (0700, owned by `user`, in the
    # container's own filesystem: no host mount); the JSON files its artifacts.outputs name are
    # copied out of the stopped container into the result's outputs_summary (tasks/outputs.py).
    results_dir: str | None = None
    # Containers created and started ahead, each waiting to be handed one task (tasks/warm.py);
    # they count against `concurrency`. 0: every task gets a container made for it.
    warm: int = Field(0, ge=0, le=MAX_WARM)
    # An idle warm container older than this is replaced by a fresh one.
    warm_max_age: Duration = Field(DEFAULT_WARM_MAX_AGE, ge=1.0, le=86400.0)
    sandbox: SandboxLimits = SandboxLimits()

    @model_validator(mode="before")
    @classmethod
    def _allow_default_image(cls, data: Any) -> Any:
        if isinstance(data, dict):
            image = data.get("image", DEFAULT_IMAGE)
            allowed = list(data.get("allowed_images") or [])
            if isinstance(image, str) and image not in allowed:
                allowed.insert(0, image)
            handler = data.get("handler")
            handler_image = (handler.get("image") if isinstance(handler, dict)
                             else getattr(handler, "image", None))
            if isinstance(handler_image, str) and handler_image not in allowed:
                allowed.append(handler_image)
            data = {**data, "allowed_images": allowed}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_timeout < self.default_timeout:
            raise ValueError(f"max_timeout ({self.max_timeout:g} s) is below "
                             f"default_timeout ({self.default_timeout:g} s)")
        for mount in self.mounts:
            parse_mount(mount)
        if self.results_dir is not None:
            target = self.results_dir
            if (not target.startswith("/") or target == "/" or "\0" in target or ":" in target
                    or posixpath.normpath(target) != target):
                raise ValueError(f"results_dir must be an absolute, normalised container path "
                                 f"other than /; got {target!r:.200}")
            if any(parse_mount(mount)[1] == target for mount in self.mounts):
                raise ValueError(f"results_dir {target!r} is also a mount's target")
        if self.concurrency and self.warm > self.concurrency:
            raise ValueError(f"warm ({self.warm}) must not exceed concurrency "
                             f"({self.concurrency}): warm containers count against it")
        if not _USER.fullmatch(self.user):
            raise ValueError(f"user must be a numeric \"uid\" or \"uid:gid\" such as "
                             f"\"{DEFAULT_USER}\"; got {self.user!r:.80}")
        for capability in self.cap_add:
            name = capability.upper().removeprefix("CAP_")
            if name == "ALL" or not _CAPABILITY.fullmatch(name):
                raise ValueError(f"cap_add takes capability names such as \"NET_BIND_SERVICE\" "
                                 f"(ALL is not allowed); got {capability!r:.80}")
        for key in self.env:
            if not key or "=" in key:
                raise ValueError(f"env names must be non-empty and contain no '='; got {key!r}")
        return self

    @property
    def capabilities(self) -> list[str]:
        """cap_add as the engine takes it: upper case, no CAP_ prefix, each once."""
        return list(dict.fromkeys(c.upper().removeprefix("CAP_") for c in self.cap_add))

    def contract(self) -> dict[str, Any]:
        """What a caller may send for this class, as the orchestrator checks it at submit
        (GetResourceAvailability's workload_contracts)."""
        return {
            "handler": self.handler is not None,
            "default_image": self.image,
            "allowed_images": list(self.allowed_images),
            "mounts": [{"host_path": source, "mount_path": target, "read_only": mode == "ro"}
                       for source, target, mode in map(parse_mount, self.mounts)],
            "max_timeout_seconds": self.max_timeout,
            "enabled": self.concurrency > 0,
            "results_dir": self.results_dir,
        }

    def unprotected_rw_mounts(self) -> list[str]:
        """rw mounts whose host path is not mounted nosuid,nodev on this host (as seen here)."""
        found = []
        for mount in self.mounts:
            source, _, mode = parse_mount(mount)
            if mode != "rw":
                continue
            try:
                flags = os.statvfs(source).f_flag
            except OSError:
                continue  # not visible from here (e.g. env-manager itself in a container)
            if not (flags & os.ST_NOSUID and flags & os.ST_NODEV):
                found.append(source)
        return found


class TaskSettings(Section):
    retention: Duration = Field(3600.0, gt=0,
                                description="how long a finished task's result is kept")
    # Per stream, as UTF-8 text; the rest is drained and dropped, and the result says it was
    # truncated. Both streams together are also cut to fit server.max_message_bytes.
    output_limit_bytes: int = Field(MIB, ge=0, le=64 * MIB)
    # A task no caller has waited on for this long is stopped (tasks/runner.py); 0: never.
    abandon_grace: Duration = Field(300.0, ge=0)


def default_workload_classes(cpu_cores: int, gpu_count: int) -> dict[str, WorkloadClass]:
    """cpu_short, cpu_long and gpu sized for a host with these cores and GPUs."""
    cores = max(1, cpu_cores)
    return {
        "cpu_short": WorkloadClass(
            image=DEFAULT_IMAGE, cpus=1.0, memory=MIB * 1024,
            default_timeout=300.0, max_timeout=1800.0, concurrency=cores,
        ),
        "cpu_long": WorkloadClass(
            image=DEFAULT_IMAGE, cpus=float(min(2, cores)), memory=MIB * 4096,
            default_timeout=3600.0, max_timeout=86400.0, concurrency=max(1, cores // 2),
        ),
        # concurrency 0 without GPUs: the class exists (callers get a clear error) but never runs.
        "gpu": WorkloadClass(
            image=DEFAULT_IMAGE, gpus=1, memory=MIB * 16384, default_timeout=3600.0,
            max_timeout=86400.0, concurrency=max(0, gpu_count),
        ),
    }


def resolve_workload_classes(configured: dict[str, WorkloadClass], cpu_cores: int,
                             gpu_count: int) -> dict[str, WorkloadClass]:
    """The configured classes, or the host-sized defaults when the config names none."""
    return dict(configured) or default_workload_classes(cpu_cores, gpu_count)
