"""A sandbox's record, its container labels, and the checks of what callers send.

A sandbox id is `secrets.token_urlsafe(24)` (192 random bits): it encodes nothing, and holding it
is not enough: the caller's identity (the hash of its bearer token, plus the `on_behalf_of` an
authenticated caller such as the orchestrator vouches for) must be the creator's. The registry is
keyed by a digest of the id, so lookups never compare the secret itself.

Everything needed to re-adopt a sandbox after an env-manager restart is on its container's labels.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_infra.runtime.errors import InvalidArgument

from .. import labels

KIND_SANDBOX = "sandbox"
SANDBOX_ID = f"{labels.PREFIX}.sandbox-id"
OWNER = f"{labels.PREFIX}.sandbox-owner"
CREATED = f"{labels.PREFIX}.sandbox-created"
EXPIRES = f"{labels.PREFIX}.sandbox-expires"
IDLE = f"{labels.PREFIX}.sandbox-idle-timeout"
ENV = f"{labels.PREFIX}.sandbox-env"
WORKDIR = f"{labels.PREFIX}.sandbox-workdir"

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
MAX_PATH = 4096
MAX_ARGS_BYTES = 256 * 1024
MAX_ENV_BYTES = 64 * 1024
MAX_STDIN_BYTES = 1024 * 1024
MAX_ON_BEHALF_OF = 256


def new_id() -> str:
    return secrets.token_urlsafe(24)


def key_of(sandbox_id: str) -> str:
    return hashlib.sha256(b"agent-infra sandbox\0" + sandbox_id.encode()).hexdigest()


def owner_of(caller: str, on_behalf_of: str) -> str:
    """Who may use a sandbox: the caller's token hash and whom it acts for, hashed together."""
    if len(on_behalf_of) > MAX_ON_BEHALF_OF or "\0" in on_behalf_of:
        raise InvalidArgument(f"on_behalf_of must be at most {MAX_ON_BEHALF_OF} characters "
                              "without NUL")
    return hashlib.sha256(f"{caller}\0{on_behalf_of}".encode()).hexdigest()


@dataclass
class Sandbox:
    sandbox_id: str
    owner: str
    workload_class: str
    image: str
    container_id: str
    created_at: float
    expires_at: float
    idle_timeout: float
    env: dict[str, str]
    workdir: str
    user: str
    last_used_at: float = field(default_factory=time.time)
    running_execs: int = 0
    deleted: bool = False
    warm: bool = False  # made from a warm container: recorded in the state dir (records.py)

    @property
    def key(self) -> str:
        return key_of(self.sandbox_id)

    def touch(self) -> None:
        self.last_used_at = time.time()

    def reap_reason(self, now: float) -> str:
        """Why the reaper deletes it now ("" to keep it): TTL, or idle with no exec running."""
        if now >= self.expires_at:
            return "ttl"
        if self.running_execs == 0 and now >= self.last_used_at + self.idle_timeout:
            return "idle"
        return ""

    def labels(self) -> dict[str, str]:
        return {
            SANDBOX_ID: self.sandbox_id,
            OWNER: self.owner,
            CREATED: repr(self.created_at),
            EXPIRES: repr(self.expires_at),
            IDLE: repr(self.idle_timeout),
            ENV: json.dumps(self.env),
            WORKDIR: self.workdir,
        }

    def record(self) -> dict[str, Any]:
        """What records.py keeps of a sandbox made from a warm container."""
        return {"sandbox_id": self.sandbox_id, "owner": self.owner,
                "workload_class": self.workload_class, "image": self.image,
                "container_id": self.container_id, "created_at": self.created_at,
                "expires_at": self.expires_at, "idle_timeout": self.idle_timeout,
                "env": self.env, "workdir": self.workdir, "user": self.user}

    @classmethod
    def from_record(cls, found: Mapping[str, Any]) -> Sandbox | None:
        try:
            return cls(sandbox_id=str(found["sandbox_id"]), owner=str(found["owner"]),
                       workload_class=str(found["workload_class"]), image=str(found["image"]),
                       container_id=str(found["container_id"]),
                       created_at=float(found["created_at"]),
                       expires_at=float(found["expires_at"]),
                       idle_timeout=float(found["idle_timeout"]),
                       env={str(k): str(v) for k, v in dict(found["env"]).items()},
                       workdir=str(found["workdir"]), user=str(found["user"]), warm=True)
        except (KeyError, ValueError, TypeError):
            return None

    @classmethod
    def from_container(cls, info: Mapping[str, Any]) -> Sandbox | None:
        """The record an earlier process left on a container's labels; None if unreadable."""
        config = info.get("Config") or {}
        found = config.get("Labels") or {}
        try:
            env = json.loads(found.get(ENV, "{}"))
            return cls(sandbox_id=found[SANDBOX_ID], owner=found[OWNER],
                       workload_class=found[labels.WORKLOAD_CLASS],
                       image=str(config.get("Image", "")), container_id=str(info["Id"]),
                       created_at=float(found[CREATED]), expires_at=float(found[EXPIRES]),
                       idle_timeout=float(found[IDLE]), env=dict(env),
                       workdir=found[WORKDIR], user=str(config.get("User", "")))
        except (KeyError, ValueError, TypeError):
            return None


def check_id(sandbox_id: str) -> str:
    if not ID_PATTERN.fullmatch(sandbox_id):
        raise InvalidArgument("sandbox_id must be the id CreateSandbox returned (20-64 "
                              f"URL-safe characters); got {sandbox_id!r:.80}")
    return sandbox_id


def check_env(env: Mapping[str, str], field_name: str) -> dict[str, str]:
    size = 0
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"{field_name} has an invalid variable {key!r:.80}: names "
                                  "must be non-empty without '=' or NUL, values without NUL")
        size += len(key) + len(value)
    if size > MAX_ENV_BYTES:
        raise InvalidArgument(f"{field_name} is too large: {size} bytes (limit {MAX_ENV_BYTES})")
    return dict(env)


def check_command(command: list[str]) -> list[str]:
    if not command or not command[0]:
        raise InvalidArgument("command is empty; give argv, e.g. [\"sh\", \"-c\", \"echo hi\"]")
    if any("\0" in part for part in command):
        raise InvalidArgument("command must not contain NUL")
    if sum(len(part) for part in command) > MAX_ARGS_BYTES:
        raise InvalidArgument(f"command is longer than {MAX_ARGS_BYTES} bytes")
    return list(command)


def check_workdir(workdir: str, default: str) -> str:
    if not workdir:
        return default
    if not workdir.startswith("/") or "\0" in workdir or len(workdir) > MAX_PATH:
        raise InvalidArgument(f"workdir must be an absolute path; got {workdir!r:.200}")
    return workdir


def sandbox_path(path: str, root: str) -> str:
    """`path` (relative to `root`, or absolute under it) as a normalised absolute path under
    `root`; InvalidArgument naming `path` when it is empty, has "..", NUL, or leaves `root`.

    Lexical only: symlinks are handled where the file is read or written (sandboxes/files.py),
    as the sandbox's own user, after resolving the directory in the container."""
    if not path or len(path) > MAX_PATH or "\0" in path:
        raise InvalidArgument(f"path must be 1-{MAX_PATH} characters without NUL")
    if ".." in path.split("/"):
        raise InvalidArgument(f"path must not contain '..'; got {path!r:.200}")
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join(root, path))
    if full == root or not full.startswith(root + "/"):
        raise InvalidArgument(f"path {path!r:.200} is outside the sandbox's working directory "
                              f"{root}; give a path relative to it, or absolute under it")
    return full
