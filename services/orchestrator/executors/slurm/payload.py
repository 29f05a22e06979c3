"""A gpu_slurm task's payload: parsed and checked into the job it asks for (pure: no I/O).

Keys (all optional but command; any other key is refused as INVALID_ARGUMENT):

  command  a JSON array of strings, run as that argv; or any other text, run by `/bin/sh -c`
  env      a JSON object of strings, exported to the command
  stdin    text given to the command on its standard input
  workdir  an absolute path on the compute node to run in
  gpus     a whole number of GPUs to ask for (`--gres=gpu:N`)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agent_infra.runtime.errors import InvalidArgument
from agent_infra.runtime.parsing import load_json, parse_int

SLURM_CLASS = "gpu_slurm"
PAYLOAD_KEYS = ("command", "env", "stdin", "workdir", "gpus")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_GPUS = 64


@dataclass(frozen=True)
class JobSpec:
    command: tuple[str, ...] | str  # an argv, or text for /bin/sh -c
    env: tuple[tuple[str, str], ...]
    stdin: str | None
    workdir: str | None
    gpus: int


def parse_payload(payload: Mapping[str, str]) -> JobSpec:
    """The job a payload asks for, or InvalidArgument naming the key at fault."""
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    if unknown:
        raise InvalidArgument(f"payload has unknown key(s) {', '.join(map(repr, unknown))} for "
                              f"{SLURM_CLASS}; allowed keys: {', '.join(PAYLOAD_KEYS)}")
    command = _command(payload.get("command", ""))
    env: list[tuple[str, str]] = []
    if text := payload.get("env", "").strip():
        try:
            decoded = load_json(text, "the value")
        except ValueError as exc:
            raise InvalidArgument(f"payload.env is not JSON this server accepts: {exc}") from None
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise InvalidArgument('payload.env must be a JSON object of strings, {"NAME": "value"}')
        for name, value in decoded.items():
            if not ENV_NAME.fullmatch(name):
                raise InvalidArgument(f"payload.env name {name!r:.80} is not a valid variable name")
            if "\0" in value:
                raise InvalidArgument(f"payload.env.{name} contains a NUL character")
            env.append((name, value))
    workdir = payload.get("workdir") or None
    if workdir is not None and (not workdir.startswith("/") or "\0" in workdir):
        raise InvalidArgument(f"payload.workdir must be an absolute path; got {workdir!r:.200}")
    gpus_text = payload.get("gpus", "").strip()
    gpus = 0
    if gpus_text:
        try:
            gpus = parse_int(gpus_text, "payload.gpus", 0, MAX_GPUS)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    stdin = payload.get("stdin")
    return JobSpec(command, tuple(env), stdin if stdin else None, workdir,
                   gpus)


def _command(text: str) -> tuple[str, ...] | str:
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument(f"payload.command is required for {SLURM_CLASS} (a JSON array of "
                              "strings, or text run by /bin/sh -c)")
    if stripped.startswith(("[", '"')):
        try:
            decoded = load_json(stripped, "payload.command")
        except ValueError:
            decoded = None  # not JSON after all: shell text that starts with [ or "
        if isinstance(decoded, list):
            if not decoded or not all(isinstance(a, str) and "\0" not in a for a in decoded):
                raise InvalidArgument("payload.command as a JSON array needs one or more strings")
            return tuple(decoded)
        if isinstance(decoded, str):
            stripped = decoded
    if "\0" in stripped:
        raise InvalidArgument("payload.command contains a NUL character")
    return stripped
