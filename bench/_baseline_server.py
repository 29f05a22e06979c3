"""The floor a bench holds a daemon against: a bare grpc.aio server, READY=1, serve until SIGTERM.

    python bench/_baseline_server.py ADDR [submit-echo | env-manager]

Binds ADDR, starts, sends READY=1 to $NOTIFY_SOCKET (the systemd notify protocol, as the daemons
do) and serves until SIGTERM or SIGINT, then exits 0. With no mode it serves nothing and imports
grpc alone: the start-up and memory floor of any Python gRPC daemon (bench/daemon_startup.py).
  submit-echo  orchestrator.v1 SubmitTask, answered success at once, nothing stored: the same
               wire as the orchestrator minus all it does (bench/submit_throughput.py).
  env-manager  env_manager.v1 ExecuteTask (success, exit code 0, no container) and
               GetResourceAvailability (available), answered at once: an env-manager that costs
               the orchestrator nothing to wait for (bench/client_overhead.py).
Started through bench._support.start_baseline, in a process of its own so that its CPU time is
not taken from the process being measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import grpc

MODES = ("submit-echo", "env-manager")


def handlers(mode: str) -> Any:
    """The generic RPC handler serving `mode` (the wire stubs load only here, not for the floor)."""
    if mode == "submit-echo":
        from agent_infra.wire import orchestrator_pb2 as pb

        async def submit(request: pb.SubmitTaskRequest, context: Any) -> pb.SubmitTaskResponse:
            return pb.SubmitTaskResponse(success=True, task_id=request.id)

        return grpc.method_handlers_generic_handler("orchestrator.v1.OrchestratorService", {
            "SubmitTask": grpc.unary_unary_rpc_method_handler(
                submit, request_deserializer=pb.SubmitTaskRequest.FromString,
                response_serializer=pb.SubmitTaskResponse.SerializeToString),
        })

    from agent_infra.wire import env_manager_pb2 as em

    async def execute(request: em.ExecuteTaskRequest, context: Any) -> em.ExecuteTaskResponse:
        return em.ExecuteTaskResponse(success=True, result={
            "exit_code": "0", "stdout": "", "stderr": "", "timed_out": "false"}, latency_ms=0.0)

    async def availability(request: em.GetResourceAvailabilityRequest,
                           context: Any) -> em.ResourceAvailabilityResponse:
        return em.ResourceAvailabilityResponse(available=True, capacity=1000, in_use=0)

    return grpc.method_handlers_generic_handler("env_manager.v1.EnvManagerService", {
        "ExecuteTask": grpc.unary_unary_rpc_method_handler(
            execute, request_deserializer=em.ExecuteTaskRequest.FromString,
            response_serializer=em.ExecuteTaskResponse.SerializeToString),
        "GetResourceAvailability": grpc.unary_unary_rpc_method_handler(
            availability, request_deserializer=em.GetResourceAvailabilityRequest.FromString,
            response_serializer=em.ResourceAvailabilityResponse.SerializeToString),
    })


async def main(address: str, mode: str | None) -> None:
    server = grpc.aio.server()
    if mode is not None:
        server.add_generic_rpc_handlers([handlers(mode)])
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot bind {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3 or sys.argv[2:] not in ([], *([m] for m in MODES)):
        raise SystemExit(f"usage: {sys.argv[0]} ADDR [{' | '.join(MODES)}]")
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
