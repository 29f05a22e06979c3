"""Sandbox sessions from the client: a long-lived container in which commands run one after
another, their files and processes kept between them.

    async with infra.sandbox("cpu_short") as sb:          # AgentInfra (via the orchestrator)
        await sb.put_file("main.py", "print(40 + 2)")
        r = await sb.run("python main.py")                  # a string runs in /bin/sh -c
        print(r.exit_code, r.stdout, r.stderr)
        data = await sb.get_file("out.json")

`EnvManagerClient` and `OrchestratorClient` both have the calls (`create_sandbox`, `sandbox`,
`sandbox_exec`, `put_file`, `get_file`, `list_sandboxes`, `delete_sandbox`) through
`SandboxCalls`. Leaving the ``async with`` block deletes the sandbox (container and files).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from ._base import ServiceClient
from .errors import NotFound

__all__ = ["ExecChunk", "ExecResult", "Sandbox", "SandboxCalls", "SandboxInfo"]

SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True)
class SandboxInfo:
    sandbox_id: str
    task_class: str
    image: str
    created_at: int
    expires_at: int
    last_used_at: int
    idle_timeout_seconds: int
    running_execs: int


@dataclass(frozen=True)
class ExecChunk:
    """Output of a running command: `stream` is stdout or stderr."""

    stream: str
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    """A finished command (SandboxExec's last message, with the output gathered by run())."""

    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    timed_out: bool = False
    truncated: bool = False
    duration_ms: float = 0.0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def argv(command: str | Sequence[str]) -> list[str]:
    """A string is a shell line (/bin/sh -c); a sequence is argv as it is."""
    return [*SHELL, command] if isinstance(command, str) else list(command)


class SandboxCalls(ServiceClient):
    """The sandbox RPCs, shared by EnvManagerClient and OrchestratorClient (same shapes; the
    class field is `workload_class` at env-manager, `task_class` at the orchestrator)."""

    _sandbox_pb: Any
    _class_field: str

    def _request(self, name: str, on_behalf_of: str, **fields: Any) -> Any:
        if on_behalf_of:
            fields["on_behalf_of"] = on_behalf_of  # env-manager's only
        return getattr(self._sandbox_pb, name)(**fields)

    async def create_sandbox(self, task_class: str = "cpu_short", *, image: str = "",
                             env: Mapping[str, str] | None = None, ttl_seconds: int = 0,
                             idle_timeout_seconds: int = 0, on_behalf_of: str = "",
                             timeout: float | None = None) -> Sandbox:
        """Create a sandbox (its container started); 0 for ttl/idle means the class's default.

        Raises InvalidArgument (naming the field), ResourceExhausted (the class's
        max_sandboxes), FailedPrecondition (image missing on the host)."""
        request = self._request("CreateSandboxRequest", on_behalf_of, image=image,
                                env=dict(env or {}), ttl_seconds=ttl_seconds,
                                idle_timeout_seconds=idle_timeout_seconds,
                                **{self._class_field: task_class})
        answer = await self._unary("CreateSandbox", request, _or(timeout, self._config
                                                                 .deadlines.control))
        return Sandbox(self, answer.sandbox_id, self._info(answer.sandbox), on_behalf_of)

    @contextlib.asynccontextmanager
    async def sandbox(self, task_class: str = "cpu_short", **options: Any
                      ) -> AsyncIterator[Sandbox]:
        """`async with client.sandbox("cpu_short") as sb:` ... deleted at the end."""
        async with await self.create_sandbox(task_class, **options) as created:
            yield created

    def sandbox_exec(self, sandbox_id: str, command: str | Sequence[str], *,
                     stdin: bytes | str | None = None, env: Mapping[str, str] | None = None,
                     timeout_seconds: int = 0, workdir: str = "", on_behalf_of: str = "",
                     timeout: float | None = None) -> AsyncIterator[ExecChunk | ExecResult]:
        """Output chunks as they come, then one ExecResult (without the output)."""
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        request = self._request("SandboxExecRequest", on_behalf_of, sandbox_id=sandbox_id,
                                command=argv(command), stdin=data, env=dict(env or {}),
                                timeout_seconds=timeout_seconds, workdir=workdir)
        deadlines = self._config.deadlines
        deadline = _or(timeout, (timeout_seconds or deadlines.task) + deadlines.task_margin)
        return self._stream("SandboxExec", request, deadline, _exec_item)

    async def put_file(self, sandbox_id: str, path: str, content: bytes | str, *, mode: int = 0,
                       on_behalf_of: str = "", timeout: float | None = None) -> str:
        """Write a file (relative to the sandbox's working directory); its absolute path."""
        data = content.encode() if isinstance(content, str) else content
        request = self._request("PutFileRequest", on_behalf_of, sandbox_id=sandbox_id,
                                path=path, content=data, mode=mode)
        answer = await self._unary("PutFile", request, _or(timeout, self._config.deadlines.read))
        return str(answer.path)

    async def get_file(self, sandbox_id: str, path: str, *, on_behalf_of: str = "",
                       timeout: float | None = None) -> bytes:
        """A file's content (relative to the sandbox's working directory, or under it)."""
        return (await self.read_file(sandbox_id, path, on_behalf_of=on_behalf_of,
                                     timeout=timeout))[1]

    async def read_file(self, sandbox_id: str, path: str, *, on_behalf_of: str = "",
                        timeout: float | None = None) -> tuple[str, bytes]:
        """(the file's absolute path, its content)."""
        request = self._request("GetFileRequest", on_behalf_of, sandbox_id=sandbox_id,
                                path=path)
        answer = await self._unary("GetFile", request, _or(timeout, self._config.deadlines.read))
        return str(answer.path), bytes(answer.content)

    async def list_sandboxes(self, task_class: str = "", *, on_behalf_of: str = "",
                             timeout: float | None = None) -> list[SandboxInfo]:
        request = self._request("ListSandboxesRequest", on_behalf_of,
                                **{self._class_field: task_class})
        answer = await self._unary("ListSandboxes", request,
                                   _or(timeout, self._config.deadlines.read))
        return [self._info(item) for item in answer.sandboxes]

    async def delete_sandbox(self, sandbox_id: str, *, on_behalf_of: str = "",
                             timeout: float | None = None) -> None:
        """Delete the sandbox (NotFound when it is gone already)."""
        request = self._request("DeleteSandboxRequest", on_behalf_of, sandbox_id=sandbox_id)
        await self._unary("DeleteSandbox", request, _or(timeout, self._config.deadlines.control))

    def _info(self, message: Any) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=message.sandbox_id, task_class=getattr(message, self._class_field),
            image=message.image, created_at=message.created_at, expires_at=message.expires_at,
            last_used_at=message.last_used_at,
            idle_timeout_seconds=message.idle_timeout_seconds,
            running_execs=message.running_execs)


class Sandbox:
    """One sandbox: run commands, move files; `delete()` (or leave `async with`) ends it."""

    def __init__(self, calls: SandboxCalls, sandbox_id: str, info: SandboxInfo,
                 on_behalf_of: str = "") -> None:
        self._calls = calls
        self.id = sandbox_id
        self.info = info
        self._on_behalf_of = on_behalf_of

    def stream(self, command: str | Sequence[str], **options: Any
               ) -> AsyncIterator[ExecChunk | ExecResult]:
        """Output chunks as they come, then the ExecResult (see SandboxCalls.sandbox_exec)."""
        return self._calls.sandbox_exec(self.id, command, on_behalf_of=self._on_behalf_of,
                                        **options)

    async def run(self, command: str | Sequence[str], *, stdin: bytes | str | None = None,
                  env: Mapping[str, str] | None = None, timeout_seconds: int = 0,
                  workdir: str = "") -> ExecResult:
        """Run one command to its end: exit code, stdout and stderr. A string is a shell line,
        a list is argv. A non-zero exit or a timeout is a result, not an exception."""
        out, err = bytearray(), bytearray()
        end = ExecResult(-1)
        async for item in self.stream(command, stdin=stdin, env=env,
                                      timeout_seconds=timeout_seconds, workdir=workdir):
            if isinstance(item, ExecResult):
                end = item
            else:
                (err if item.stream == "stderr" else out).extend(item.data)
        return ExecResult(end.exit_code, bytes(out), bytes(err), end.timed_out, end.truncated,
                          end.duration_ms)

    async def put_file(self, path: str, content: bytes | str, *, mode: int = 0) -> str:
        return await self._calls.put_file(self.id, path, content, mode=mode,
                                          on_behalf_of=self._on_behalf_of)

    async def get_file(self, path: str) -> bytes:
        return await self._calls.get_file(self.id, path, on_behalf_of=self._on_behalf_of)

    async def delete(self) -> None:
        """Delete it; one already gone (reaped) is fine."""
        with contextlib.suppress(NotFound):
            await self._calls.delete_sandbox(self.id, on_behalf_of=self._on_behalf_of)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.delete()


def _exec_item(message: Any) -> ExecChunk | ExecResult:
    if message.exited:
        return ExecResult(message.exit_code, timed_out=message.timed_out,
                          truncated=message.truncated, duration_ms=message.duration_ms)
    return ExecChunk(message.stream, bytes(message.data))


def _or(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout
