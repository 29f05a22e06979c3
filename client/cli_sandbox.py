"""`agent-infra sandbox create|exec|ls|rm|put|get`: sandbox sessions through the orchestrator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    Context,
    UsageError,
    add_command,
    add_command_group,
    non_negative_int,
    parse_assignments,
)
from .cli_output import format_time, to_jsonable
from .sandbox import ExecResult

__all__ = ["register"]


def register(subparsers: Any) -> None:
    commands = add_command_group(
        subparsers, "sandbox", help="sandbox sessions: a container kept for many commands",
        description="Sandboxes: a container of a task class in which commands run one after "
                    "another, with their files and processes kept, until `rm`, its TTL or its "
                    "idle timeout.",
        examples="""
            agent-infra sandbox create --ttl 600           # prints the id
            agent-infra sandbox exec ID -- sh -c 'echo hi > f; cat f'
            agent-infra sandbox rm ID""")

    create = add_command(
        commands, "create", cmd_create, help="create a sandbox and print its id",
        examples="""
            agent-infra sandbox create --class cpu_short --ttl 600 --idle-timeout 60
            agent-infra sandbox create --env MODE=test --json""")
    create.add_argument("--class", dest="task_class", default="cpu_short", metavar="CLASS")
    create.add_argument("--image", default="", help="one of the class's allowed images")
    create.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of every command (repeatable)")
    create.add_argument("--ttl", type=non_negative_int, default=0, metavar="SECONDS",
                        help="lifetime (default: the class's)")
    create.add_argument("--idle-timeout", type=non_negative_int, default=0, metavar="SECONDS",
                        help="deleted after this long unused (default: the class's)")

    run = add_command(
        commands, "exec", cmd_exec,
        help="run a command in a sandbox; its output streams, its exit code is ours",
        examples="""
            agent-infra sandbox exec ID -- python -c 'print(1)'
            echo data | agent-infra sandbox exec ID --stdin -- wc -c""")
    run.add_argument("sandbox_id", metavar="ID")
    run.add_argument("command", nargs="+", metavar="COMMAND", help="argv, after `--`")
    run.add_argument("--stdin", action="store_true", help="send our standard input to it")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--workdir", default="")
    run.add_argument("--timeout-seconds", type=non_negative_int, default=0, metavar="N")

    listing = add_command(commands, "ls", cmd_ls, help="list your sandboxes",
                          examples="agent-infra sandbox ls --json")
    listing.add_argument("--class", dest="task_class", default="", metavar="CLASS")

    remove = add_command(commands, "rm", cmd_rm, help="delete sandboxes",
                         examples="agent-infra sandbox rm ID [ID...]")
    remove.add_argument("sandbox_ids", nargs="+", metavar="ID")

    put = add_command(commands, "put", cmd_put, help="copy a local file into a sandbox",
                      examples="agent-infra sandbox put ID main.py app/main.py")
    put.add_argument("sandbox_id", metavar="ID")
    put.add_argument("local", metavar="LOCAL", help="local file (`-`: stdin)")
    put.add_argument("path", metavar="PATH", help="path in the sandbox's working directory")

    get = add_command(commands, "get", cmd_get, help="print a file of a sandbox",
                      examples="agent-infra sandbox get ID out.json > out.json")
    get.add_argument("sandbox_id", metavar="ID")
    get.add_argument("path", metavar="PATH")


def _env(items: list[str], option: str) -> dict[str, str]:
    return {key: str(value) for key, value in parse_assignments(items, option).items()}


async def cmd_create(ctx: Context) -> int:
    args = ctx.args
    async with ctx.orchestrator() as orch:
        created = await orch.create_sandbox(args.task_class, image=args.image,
                                            env=_env(args.env, "--env"), ttl_seconds=args.ttl,
                                            idle_timeout_seconds=args.idle_timeout)
    if ctx.out.json_mode:
        ctx.out.json_doc(to_jsonable(created.info))
    else:
        ctx.out.line(created.id)
    return EXIT_OK


async def cmd_exec(ctx: Context) -> int:
    args = ctx.args
    stdin = sys.stdin.buffer.read() if args.stdin else None
    end = ExecResult(-1)
    kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    async with ctx.orchestrator() as orch:
        async for item in orch.sandbox_exec(args.sandbox_id, list(args.command), stdin=stdin,
                                            env=_env(args.env, "--env"),
                                            timeout_seconds=args.timeout_seconds,
                                            workdir=args.workdir):
            if isinstance(item, ExecResult):
                end = item
            elif ctx.out.json_mode:
                kept[item.stream].extend(item.data)
            else:
                target = sys.stderr if item.stream == "stderr" else sys.stdout
                target.buffer.write(item.data)
                target.flush()
    if ctx.out.json_mode:
        ctx.out.json_doc({"exit_code": end.exit_code, "timed_out": end.timed_out,
                          "truncated": end.truncated, "duration_ms": end.duration_ms,
                          **{name: data.decode("utf-8", errors="replace")
                             for name, data in kept.items()}})
    if end.timed_out:
        ctx.out.error(f"timed out after {args.timeout_seconds or 'the default'} s: killed")
        return EXIT_FAILED
    if end.truncated:
        ctx.out.error("output was cut at the sandbox's output limit")
    return end.exit_code if 0 <= end.exit_code < 256 else EXIT_FAILED


async def cmd_ls(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        found = await orch.list_sandboxes(ctx.args.task_class)
    if ctx.out.json_mode:
        ctx.out.json_doc([to_jsonable(info) for info in found])
        return EXIT_OK
    ctx.out.table(["ID", "CLASS", "IMAGE", "CREATED", "EXPIRES", "LAST USED"],
                  [(i.sandbox_id, i.task_class, i.image, format_time(i.created_at),
                    format_time(i.expires_at), format_time(i.last_used_at)) for i in found])
    return EXIT_OK


async def cmd_rm(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        for sandbox_id in ctx.args.sandbox_ids:
            await orch.delete_sandbox(sandbox_id)
            if not ctx.out.json_mode:
                ctx.out.line(f"{sandbox_id} deleted")
    if ctx.out.json_mode:
        ctx.out.json_doc({"deleted": list(ctx.args.sandbox_ids)})
    return EXIT_OK


async def cmd_put(ctx: Context) -> int:
    args = ctx.args
    data = _read_local(args.local)
    async with ctx.orchestrator() as orch:
        path = await orch.put_file(args.sandbox_id, args.path, data)
    if ctx.out.json_mode:
        ctx.out.json_doc({"path": path, "size_bytes": len(data)})
    else:
        ctx.out.line(path)
    return EXIT_OK


async def cmd_get(ctx: Context) -> int:
    async with ctx.orchestrator() as orch:
        data = await orch.get_file(ctx.args.sandbox_id, ctx.args.path)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return EXIT_OK


def _read_local(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"LOCAL {name!r}: {exc.strerror}") from None
