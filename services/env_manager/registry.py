"""The service registry: what each service of the stack is, and the dependency graph between them.

`ServiceSpec` is one `[services.NAME]` table of the TOML config. `Registry` checks the set as a
whole (unknown dependencies, cycles, host ports used twice, groups) and answers graph questions:
what a request resolves to, in which order things start and stop.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Annotated, Any, Literal, Self

from agent_infra.runtime import Duration, Section
from agent_infra.runtime.errors import InvalidArgument, NotFound
from pydantic import BeforeValidator, Field, PlainSerializer, ValidationError, model_validator

Condition = Literal["started", "healthy", "completed_successfully"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "512m", "1.5GiB", "64k"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 536870912 or \"512m\"")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    else:
        raise ValueError(f"expected a size such as 536870912 or \"512m\"; got {value!r}")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_size)]


@dataclass(frozen=True)
class PortMapping:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.protocol}"


def parse_port(value: object) -> PortMapping:
    """"HOST:CONTAINER", "IP:HOST:CONTAINER", optionally "/udp"; loopback unless an IP is given."""
    if isinstance(value, PortMapping):
        return value
    if not isinstance(value, str):
        raise ValueError("expected \"host:container\" such as \"6379:6379\"")
    text, _, protocol = value.partition("/")
    protocol = protocol or "tcp"
    parts = text.split(":")
    if len(parts) == 2:
        host_ip, host_text, container_text = "127.0.0.1", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_text, container_text = parts
    else:
        raise ValueError(f"expected \"host:container\" or \"ip:host:container\"; got {value!r}")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol must be tcp or udp; got {protocol!r}")
    if not (host_text.isdigit() and container_text.isdigit()):
        raise ValueError(f"ports must be numbers; got {value!r}")
    host_port, container_port = int(host_text), int(container_text)
    for port in (host_port, container_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
    return PortMapping(host_ip, host_port, container_port, protocol)


Port = Annotated[PortMapping, BeforeValidator(parse_port), PlainSerializer(str)]


class HealthCheck(Section):
    """How to tell the service is healthy. tcp/http probe the published host port."""

    type: Literal["tcp", "http", "exec", "docker"]
    port: int | None = Field(None, ge=1, le=65535, description="container port")
    path: str = "/"
    command: list[str] | None = None
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(2.0, gt=0)
    retries: int = Field(3, ge=1)
    start_period: Duration = 0.0

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.type in ("tcp", "http") and self.port is None:
            raise ValueError(f"a {self.type} health check needs port (the container port)")
        if self.type == "exec" and not self.command:
            raise ValueError("an exec health check needs command (a list)")
        if self.type == "http" and not self.path.startswith("/"):
            raise ValueError("path must start with /")
        return self


class Resources(Section):
    cpus: float | None = Field(None, gt=0)
    memory: ByteSize | None = None
    gpus: int | Literal["all"] | None = None


class ServiceSpec(Section):
    image: str = Field(min_length=1)
    command: list[str] | str | None = None
    entrypoint: list[str] | str | None = None
    env: dict[str, str] = {}
    ports: list[Port] = []
    volumes: list[str] = []
    network_mode: str | None = None
    depends_on: dict[str, Condition] = {}
    healthcheck: HealthCheck | None = None
    restart: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    resources: Resources = Resources()
    labels: dict[str, str] = {}
    required: bool = True
    profiles: list[str] = []
    stop_grace: Duration = 10.0
    init: bool = False
    user: str | None = None
    working_dir: str | None = None
    # The operator's allowlist for StartServices overrides (nothing by default), e.g.
    # ["env", "ports"] or ["env.LOG_LEVEL"]; registry.apply_overrides.
    overridable: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _depends_on_list(cls, data: Any) -> Any:
        # `depends_on = ["db"]` is shorthand for `{db = "started"}`, as in compose files.
        if isinstance(data, dict) and isinstance(data.get("depends_on"), list):
            data = {**data, "depends_on": dict.fromkeys(data["depends_on"], "started")}
        return data

    @model_validator(mode="after")
    def _overridable_known(self) -> Self:
        for entry in self.overridable:
            check_overridable(entry)
        return self

    @model_validator(mode="after")
    def _probe_reachable(self) -> Self:
        check = self.healthcheck
        if check is None or check.type not in ("tcp", "http") or self.network_mode == "host":
            return self
        if not any(p.container_port == check.port and p.protocol == "tcp" for p in self.ports):
            raise ValueError(f"healthcheck.port {check.port} is not published in ports; "
                             "publish it or use an exec health check")
        return self

    def host_port_for(self, container_port: int) -> int:
        if self.network_mode == "host":
            return container_port
        for mapping in self.ports:
            if mapping.container_port == container_port and mapping.protocol == "tcp":
                return mapping.host_port
        raise KeyError(container_port)

    def config_hash(self) -> str:
        """Changes whenever anything that shapes the container changes."""
        # overridable shapes what callers may ask, not the container.
        canonical = json.dumps(self.model_dump(mode="json", exclude={"overridable"}),
                               sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# What StartServices overrides can name ("SERVICE.<key>"), when the registry allows it.
_OVERRIDABLE = {"image", "command", "entrypoint", "network_mode", "restart", "user", "working_dir",
                "ports"}
_OVERRIDABLE_MAPS = {"env", "labels"}  # "env.KEY"; "env" in overridable allows every KEY
_OVERRIDABLE_RESOURCES = {"cpus", "memory", "gpus"}
# network_mode overrides may always narrow to no network; other values must be the registry's.
_SAFE_NETWORK_MODES = {"none"}


def check_overridable(entry: str) -> None:
    """ValueError unless `entry` names something an override can change."""
    head, dot, sub = entry.partition(".")
    if head in _OVERRIDABLE_MAPS and (not dot or sub):
        return
    if head == "resources" and (not dot or sub in _OVERRIDABLE_RESOURCES):
        return
    if entry in _OVERRIDABLE:
        return
    raise ValueError(f"overridable: {entry!r} cannot be overridden; choose from "
                     f"{', '.join(sorted(_OVERRIDABLE))}, env, env.KEY, labels, labels.KEY, "
                     "resources, resources.cpus|memory|gpus")


def _allowed(field: str, overridable: Iterable[str]) -> bool:
    head = field.partition(".")[0]
    return any(entry in (field, head) for entry in overridable)


def apply_overrides(spec: ServiceSpec, name: str, overrides: Mapping[str, str],
                    network_modes: Iterable[str | None] = ()) -> ServiceSpec:
    """A copy of `spec` with this call's overrides for `name` ("NAME.image", "NAME.env.KEY", ...).

    Only what the service's `overridable` lists (the operator's allowlist; nothing by default)
    can be overridden: anything else is InvalidArgument naming the service and the key. A
    network_mode override must be one of `network_modes` (the registry's own) or "none".
    command/entrypoint take a JSON list or a plain string; ports a JSON list of "host:container".
    """
    data = spec.model_dump(mode="json")
    changed = False
    prefix = f"{name}."
    for key, value in overrides.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix):]
        head, _, sub = field.partition(".")
        known = ((head in _OVERRIDABLE_MAPS and sub) or field in _OVERRIDABLE
                 or (head == "resources" and sub in _OVERRIDABLE_RESOURCES))
        if not known:
            raise InvalidArgument(f"overrides[{key[:200]!r}]: {field[:120]!r} cannot be "
                                  "overridden for any service; overridable keys: image, command, "
                                  "entrypoint, env.KEY, labels.KEY, resources.cpus|memory|gpus, "
                                  "network_mode, ports, restart, user, working_dir")
        if not _allowed(field, spec.overridable):
            granted = ", ".join(spec.overridable) or "nothing"
            raise InvalidArgument(f"overrides[{key[:200]!r}]: service {name!r} does not allow "
                                  f"overriding {field[:120]!r} (the registry's "
                                  f"services.{name}.overridable allows: {granted})")
        if head in _OVERRIDABLE_MAPS:
            data[head] = {**data[head], sub: value}
        elif head == "resources":
            data["resources"] = {**data["resources"], sub: value}
        elif field in ("command", "entrypoint"):
            data[field] = _list_or_text(value)
        elif field == "ports":
            data[field] = _json_list(key, value)
        elif field == "network_mode":
            modes = {mode for mode in network_modes if mode} | _SAFE_NETWORK_MODES
            if value not in modes:
                raise InvalidArgument(
                    f"overrides[{key[:200]!r}]: network_mode {value[:120]!r} is not one the "
                    f"registry uses; allowed: {', '.join(sorted(modes))}")
            data[field] = value
        else:
            data[field] = value
        changed = True
    if not changed:
        return spec
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"overrides for {name}: {where}: {first['msg']}") from None


def _json_list(key: str, value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise InvalidArgument(f"overrides[{key[:200]!r}]: expected a JSON list of strings such "
                              "as [\"6379:6379\"]")
    return parsed


def _list_or_text(value: str) -> list[str] | str:
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
    return value


class Registry:
    """A validated set of services and the graph between them."""

    def __init__(self, services: Mapping[str, ServiceSpec]) -> None:
        for name in services:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"services.{name}: a service name is lower-case letters, digits, "
                                 "'-', '_' or '.', starting with a letter or digit")
        self._services = dict(services)
        for name, spec in services.items():
            for dependency in spec.depends_on:
                if dependency not in services:
                    raise ValueError(f"services.{name}.depends_on: unknown service "
                                     f"{dependency!r}")
        self._order = _topological_order(self._services)
        self._groups: dict[str, list[str]] = {}
        for name, spec in services.items():
            for group in spec.profiles:
                if group in services:
                    raise ValueError(f"services.{name}.profiles: {group!r} is also a service name")
                self._groups.setdefault(group, []).append(name)
        _check_host_ports(self._services)

    @property
    def names(self) -> list[str]:
        """Every service, dependencies before dependents."""
        return list(self._order)

    @property
    def groups(self) -> dict[str, list[str]]:
        return {group: list(members) for group, members in self._groups.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def __len__(self) -> int:
        return len(self._services)

    def spec(self, name: str) -> ServiceSpec:
        try:
            return self._services[name]
        except KeyError:
            raise NotFound(f"unknown service {name!r}") from None

    def expand(self, names: Iterable[str]) -> list[str]:
        """Service and group names to services (empty = all), in start order; unknown: NotFound."""
        requested = list(names)
        if not requested:
            return self.names
        unknown = [n for n in requested if n not in self._services and n not in self._groups]
        if unknown:
            raise NotFound(f"unknown service or group: {', '.join(sorted(set(unknown)))}")
        chosen: set[str] = set()
        for name in requested:
            chosen.update(self._groups.get(name, [name]))
        return [name for name in self._order if name in chosen]

    def with_dependencies(self, names: Iterable[str]) -> list[str]:
        """`names` plus everything they depend on, transitively, in start order."""
        chosen: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in chosen:
                chosen.add(name)
                pending.extend(self.spec(name).depends_on)
        return [name for name in self._order if name in chosen]

    def with_dependents(self, names: Iterable[str]) -> list[str]:
        """`names` plus everything that depends on them, transitively, in start order."""
        chosen = set(names)
        for name in self._order:
            if any(dep in chosen for dep in self._services[name].depends_on):
                chosen.add(name)
        return [name for name in self._order if name in chosen]

    def dependents(self, name: str) -> list[str]:
        return [other for other in self._order if name in self._services[other].depends_on]

    def images(self) -> list[str]:
        return sorted({spec.image for spec in self._services.values()})

    def network_modes(self) -> set[str | None]:
        return {spec.network_mode for spec in self._services.values()}


def _topological_order(services: Mapping[str, ServiceSpec]) -> list[str]:
    """Every service after its dependencies: depth first, names and dependencies sorted."""
    graph = {name: sorted(services[name].depends_on) for name in sorted(services)}
    # Edges from each service to its dependencies, names and edges added in sorted order:
    # graphlib then searches depth first as this order does, and names the first cycle met,
    # in depends_on order.
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in graph:
        sorter.add(name)
    for name, dependencies in graph.items():
        for dependency in dependencies:
            sorter.add(dependency, name)
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle: list[str] = exc.args[1]
        raise ValueError(f"services.{cycle[-2]}.depends_on: dependency cycle "
                         f"{' -> '.join(cycle)}") from None
    order: list[str] = []
    placed: set[str] = set()
    for root in graph:
        # Acyclic now, so a service is placed once the last of its dependencies is.
        stack = [(root, iter(graph[root]))]
        while stack:
            name, pending = stack[-1]
            dep = next((d for d in pending if d not in placed), None)
            if dep is not None:
                stack.append((dep, iter(graph[dep])))
                continue
            stack.pop()
            if name not in placed:
                placed.add(name)
                order.append(name)
    return order


def _check_host_ports(services: Mapping[str, ServiceSpec]) -> None:
    seen: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for name, spec in services.items():
        for mapping in spec.ports:
            key = (mapping.host_port, mapping.protocol)
            for other, ip in seen.get(key, []):
                if "0.0.0.0" in (ip, mapping.host_ip) or ip == mapping.host_ip:
                    raise ValueError(
                        f"services.{name}.ports: host port {mapping.host_port}/{mapping.protocol}"
                        f" is already used by service {other!r}")
            seen.setdefault(key, []).append((name, mapping.host_ip))
