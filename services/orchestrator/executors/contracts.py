"""What each env-manager endpoint accepts per workload class, learnt from env-manager itself.

GetResourceAvailability answers carry `workload_contracts` (class -> JSON: handler,
default_image, allowed_images, mounts, max_timeout_seconds, enabled), built by env-manager from
its own configuration, so nothing is configured twice. The orchestrator asks every endpoint (an
empty workload_class: contracts and hardware only) when it first needs them and every
REFRESH_S s after; an answer that fails leaves that endpoint's last contracts in place.

SubmitTask (and POST /queue/submit) checks a payload against the contracts known for its class
at that moment (`check`): refused (INVALID_ARGUMENT, the same message env-manager would give)
only when every endpoint whose contract for the class is known refuses it. When no contract is
known (no env-manager has answered yet, or the class is not an env-manager class) the submit is
accepted, and env-manager's own check at dispatch remains: such a task fails then, with the
message it would have got at submit. What is checked here: the payload's form (`execution`,
`command` or our own keys, or a domain payload, which needs a class with a handler), in an
`execution` section the image and mounts, and the paths of `artifacts.outputs` (relative, no
`..`: agent_infra.runtime.artifacts); env-manager checks the rest at dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent_infra.client import EnvManagerClient
from agent_infra.client.errors import InfraError
from agent_infra.runtime.artifacts import json_outputs
from agent_infra.runtime.errors import InvalidArgument
from agent_infra.runtime.logs import get_logger

from .protocol import CONTROL_KEYS

log = get_logger("dispatch")

REFRESH_S = 30.0
PROBE_TIMEOUT = 2.0
OUR_KEYS = frozenset({"command", "image", "env", "stdin", "workdir"})
ENVELOPE_KEYS = frozenset({"execution", "workflow_id", "tenant", "artifacts"})


class ContractCache:
    def __init__(self, clients: Sequence[EnvManagerClient], refresh_s: float = REFRESH_S) -> None:
        self._clients = list(clients)
        self._refresh_s = refresh_s
        self._known: dict[int, dict[str, dict[str, Any]]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def start(self) -> None:
        """Begin refreshing in the background (once; needs a running event loop)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def ready(self, timeout: float) -> None:
        """Wait (at most `timeout` s, and only until the first refresh ends) for contracts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._first.wait()), timeout)

    def update(self, index: int, contracts: Mapping[str, str]) -> None:
        parsed: dict[str, dict[str, Any]] = {}
        for name, text in contracts.items():
            with contextlib.suppress(ValueError):
                value = json.loads(text)
                if isinstance(value, dict):
                    parsed[name] = value
        if parsed:
            self._known[index] = parsed

    async def refresh(self) -> None:
        async def one(index: int, client: EnvManagerClient) -> None:
            try:
                found = await client.get_resource_availability("", timeout=PROBE_TIMEOUT)
            except InfraError:
                return
            self.update(index, found.workload_contracts)

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self._clients)))
        self._first.set()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the refreshing
                log.exception("contract_refresh_failed")
            await asyncio.sleep(self._refresh_s)

    def check(self, task_class: str, payload: Mapping[str, str]) -> None:
        """InvalidArgument when every endpoint that told its contract for the class refuses."""
        errors = []
        for contracts in self._known.values():
            contract = contracts.get(task_class)
            if contract is None:
                continue
            try:
                check_payload(task_class, contract, payload)
            except InvalidArgument as exc:
                errors.append(exc)
            else:
                return
        if errors:
            raise errors[0]

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)


def check_payload(task_class: str, contract: Mapping[str, Any],
                  payload: Mapping[str, str]) -> None:
    """The submit-time part of env-manager's payload rules (tasks/modes.py there)."""
    keys = set(payload) - CONTROL_KEYS
    if "execution" in keys:
        extra = sorted(keys - ENVELOPE_KEYS)
        if extra:
            raise InvalidArgument(
                f"a payload with `execution` takes only {', '.join(sorted(ENVELOPE_KEYS))}; it "
                f"also has {', '.join(repr(k[:80]) for k in extra[:10])}")
        _check_execution(task_class, contract, payload["execution"])
        json_outputs(payload.get("artifacts"))  # its paths: relative, no `..`
        return
    if "command" in keys or contract.get("handler") or keys <= OUR_KEYS:
        return
    unknown = sorted(keys - OUR_KEYS)
    raise InvalidArgument(
        f"payload has unknown key(s) {', '.join(repr(k[:80]) for k in unknown[:10])} (neither "
        f"`execution` nor `command`, and workload_class {task_class!r} has no handler for such "
        "payloads; expected keys: `execution` (a JSON object: image, command, env, "
        "timeout_seconds, container_workdir, resources, mounts) with optional workflow_id, "
        f"tenant, artifacts; or {', '.join(sorted(OUR_KEYS))})")


def _check_execution(task_class: str, contract: Mapping[str, Any], text: str) -> None:
    try:
        section = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArgument("payload.execution is not a valid JSON object") from None
    if not isinstance(section, dict):
        raise InvalidArgument("payload.execution must be a JSON object")
    command = section.get("command")
    if not ((isinstance(command, list) and command and all(isinstance(c, str) for c in command))
            or (isinstance(command, str) and command.strip())):
        raise InvalidArgument("execution.command must be a non-empty list of strings such as "
                              "[\"python\", \"train.py\"] (or a shell command line as one string)")
    allowed = [str(image) for image in contract.get("allowed_images", [])]
    image = section.get("image") or contract.get("default_image")
    if allowed and image not in allowed:
        raise InvalidArgument(f"execution.image {image!r:.200} is not allowed for workload_class "
                              f"{task_class!r}; allowed: {', '.join(allowed)}")
    granted = {m.get("host_path"): m for m in contract.get("mounts", []) if isinstance(m, dict)}
    mounts = section.get("mounts") or []
    if not isinstance(mounts, list):
        raise InvalidArgument("execution.mounts must be a list of {host_path, mount_path, "
                              "read_only}")
    for index, mount in enumerate(mounts):
        source = mount.get("host_path") if isinstance(mount, dict) else None
        if source not in granted:
            raise InvalidArgument(
                f"execution.mounts[{index}]: host_path {source!r:.200} is not granted to "
                f"workload_class {task_class!r}; granted host paths: "
                f"{', '.join(map(str, granted)) or 'none'}")
        if isinstance(mount, dict) and mount.get("read_only") is False \
                and granted[source].get("read_only"):
            raise InvalidArgument(f"execution.mounts[{index}]: host_path {source!r} is granted "
                                  f"read-only to workload_class {task_class!r}; read_only false "
                                  "refused")
