"""The service stack through `infra.env` (env-manager): start, status, logs, stop.

    python examples/services.py                  # every service of the stack
    python examples/services.py api web          # these (and what they depend on)
    python examples/services.py --keep api       # leave them running afterwards
    python examples/services.py --tail 20 api

Starts the services with live progress, shows their state read back from the engine, prints the
last lines of each one's log, then stops what this script started (services that were already
running are left alone). Only env-manager is needed: ENV_MANAGER_GRPC_ADDR (default
127.0.0.1:50100). Exit status 0 when every service came up healthy (and stopped, unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent_infra import AgentInfra, InfraError, NotFound


async def main(names: list[str], keep: bool, tail: int) -> int:
    # AgentInfra() dials nothing until first use: infra.env connects to env-manager alone (an
    # `async with AgentInfra.start()` would connect to the orchestrator first).
    infra = AgentInfra()
    try:
        env = infra.env
        # 1. What runs already: every service of the stack, by name (the named ones may
        #    depend on others).
        before = await env.get_services_status()
        already_up = {name for name, s in before.items() if s.status != "stopped"}

        # 2. Start: dependencies first, independent services in parallel. Each transition
        #    (starting, healthy, unhealthy...) arrives as it happens; the stream ends when every
        #    service is healthy or has failed.
        final: dict[str, str] = {}
        async for update in env.start_services(names):
            final[update.service_name] = update.status
            print(f"[{update.progress:3d}%] {update.service_name:<14} {update.status:<10} "
                  f"{update.message}")
        ok = all(status == "healthy" for status in final.values())  # a finished job too

        # 3. Status, read back from the engine (live CPU and memory while running).
        print(f"\n{'service':<14} {'state':<10} {'ports':<12} {'cpu':>6} {'memory':>10}")
        for name, status in sorted((await env.get_services_status(list(final))).items()):
            usage = status.resource_usage
            cpu = f"{usage.cpu_percent:.1f}%" if usage else "-"
            memory = f"{usage.memory_bytes / 2**20:.1f} MiB" if usage else "-"
            ports = ",".join(map(str, status.ports)) or "-"
            print(f"{name:<14} {status.status:<10} {ports:<12} {cpu:>6} {memory:>10}")

        # 4. Logs: the last `tail` lines of each (follow=True would keep streaming new ones).
        for name in sorted(final):
            print(f"\n--- {name} (last {tail} log lines)")
            try:
                async for entry in env.stream_logs(name, tail=tail):
                    print(f"{entry.stream}: {entry.message.rstrip()}")
            except NotFound as exc:  # a service that never got a container
                print(f"(no log: {exc.details})")

        # 5. Stop what this script started; StopServices stops dependents first.
        started = sorted(set(final) - already_up)
        if keep or not started:
            print(f"\nleft running: {', '.join(sorted(final))}")
        else:
            stopped = await env.stop_services(started)
            print("\nstopped: " + ", ".join(f"{name} ({result})" for name, result
                                            in sorted(stopped.service_results.items())))
            ok = ok and stopped.success
        return 0 if ok else 1
    finally:
        await infra.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Start, inspect and stop stack services.")
    parser.add_argument("names", nargs="*", help="services or groups (default: all)")
    parser.add_argument("--keep", action="store_true", help="leave the services running")
    parser.add_argument("--tail", type=int, default=5, help="log lines per service (default: 5)")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.names, args.keep, args.tail)))
    except InfraError as exc:
        sys.exit(f"services failed: {exc}")
