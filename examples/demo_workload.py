"""The README demo: bring the offline demo stack up through env-manager and run tasks on it.

Run by scripts/demo.sh against an env-manager serving examples/demo-stack.toml:
    python examples/demo_workload.py            # start the stack, show it, run tasks
    python examples/demo_workload.py --stop     # stop the stack
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.request

from agent_infra import EnvManagerClient, InfraError


async def bring_up(em: EnvManagerClient) -> bool:
    print("starting the demo stack (dependency order, parallel levels):")
    final: dict[str, str] = {}
    async for update in em.start_services(parallel=True):
        print(f"  [{update.progress:3d}%] {update.service_name:<12} {update.status:<10} "
              f"{update.message}")
        final[update.service_name] = update.status
    return all(status == "healthy" for status in final.values())


async def show(em: EnvManagerClient) -> None:
    print("\nservices (read back from the engine):")
    for name, status in sorted((await em.get_services_status()).items()):
        usage = status.resource_usage
        memory = f"{usage.memory_bytes / 2**20:.1f} MiB" if usage else "-"
        ports = ",".join(map(str, status.ports)) or "-"
        print(f"  {name:<12} {status.status:<10} ports {ports:<6} memory {memory:<10} "
              f"{status.container_id[:12]}")


async def run_tasks(em: EnvManagerClient) -> bool:
    print("\nthree task containers at once (workload class cpu_short):")
    commands = {
        "primes": "for n in $(seq 2 40); do f=1; for d in $(seq 2 $((n-1))); do "
                  "[ $((n % d)) -eq 0 ] && f=0 && break; done; [ $f -eq 1 ] && printf '%s ' $n;"
                  " done; echo",
        "squares": "for n in 1 2 3 4 5 6 7 8; do printf '%s ' $((n*n)); done; echo",
        "host": "echo \"$(uname -sr), $(nproc) cpus visible, no network: $(ls /sys/class/net)\"",
    }
    results = await asyncio.gather(*(
        em.execute_task(f"demo-{name}-{asyncio.get_running_loop().time():.0f}", "cpu_short",
                        {"command": command})
        for name, command in commands.items()))
    for name, result in zip(commands, results, strict=True):
        print(f"  {name:<8} exit {result.exit_code} in {result.latency_ms:5.0f} ms: "
              f"{result.stdout.strip()}")
    return all(result.success for result in results)


def fetch_web() -> None:
    with urllib.request.urlopen("http://127.0.0.1:18081/", timeout=5) as response:
        print(f"\nGET http://127.0.0.1:18081/ -> {response.status}: "
              f"{response.read().decode().strip()}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop the demo stack")
    args = parser.parse_args()
    try:
        async with EnvManagerClient() as em:
            if args.stop:
                result = await em.stop_services()
                print("stopped:", ", ".join(sorted(result.service_results)))
                return 0 if result.success else 1
            ok = await bring_up(em)
            await show(em)
            ok = await run_tasks(em) and ok
    except InfraError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    fetch_web()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
