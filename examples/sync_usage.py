"""The client from plain synchronous code (a script, a Flask view, a notebook cell): no async.

    python examples/sync_usage.py
    python examples/sync_usage.py --auto-start     # start local daemons when nothing answers

`ensure_infra_sync()` checks the infrastructure from synchronous code and returns its health
dict; it runs a short event loop of its own each time, so it can be called again and again
(each call connects, checks and closes: no channel is left bound to a finished loop). For real
work, wrap one async function per job in `asyncio.run` (see `run_task_sync`). Addresses come
from ORCHESTRATOR_GRPC_ADDR / ENV_MANAGER_GRPC_ADDR (defaults 127.0.0.1:50052 / :50100).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from agent_infra import AgentInfra, InfraError, ensure_infra_sync, shutdown_infra


def run_task_sync(command: list[str], timeout: float = 300) -> dict[str, Any]:
    """Run one task and return its decoded result, from synchronous code.

    One `asyncio.run` per call: the connection lives and dies inside it.
    """
    async def job() -> dict[str, Any]:
        async with AgentInfra.start() as infra:
            final = await infra.run_task(None, {"command": command}, timeout=timeout)
            return {"status": final.status, "error": final.error, **final.decoded_result}

    return asyncio.run(job())


def main(auto_start: bool) -> int:
    # 1. Is the infrastructure there? With auto_start=True, daemons that do not answer are
    #    started locally (and keep running for later calls; shutdown_infra() stops them).
    health = ensure_infra_sync(auto_start=auto_start)
    print(f"healthy: {health['healthy']}, version {health['version']}")
    for name, state in sorted(health["services"].items()):
        print(f"  {name}: {state}")
    if not health["healthy"]:
        print(f"not healthy: {health.get('error')}", file=sys.stderr)
        return 1

    # 2. Again: a second call works just the same (a fresh loop, a fresh connection).
    if not ensure_infra_sync()["healthy"]:
        return 1

    try:
        # 3. Real work from sync code.
        for word in ("one", "two"):
            result = run_task_sync(["echo", word])
            print(f"echo {word}: {result['status']}, stdout {result.get('stdout')!r}"
                  + (f" ({result['error']})" if result["error"] else ""))
            if result["status"] != "completed":
                return 1
        return 0
    finally:
        # 4. Only matters after auto_start: stop the daemons it started (SIGTERM, graceful).
        #    Interpreter exit would stop them too.
        asyncio.run(shutdown_infra())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Use the client from synchronous code.")
    parser.add_argument("--auto-start", action="store_true",
                        help="start env-manager and the orchestrator locally if they do not answer")
    args = parser.parse_args()
    try:
        sys.exit(main(args.auto_start))
    except InfraError as exc:  # InfraUnavailable when nothing answers (and no auto-start)
        sys.exit(f"sync_usage failed: {exc}")
