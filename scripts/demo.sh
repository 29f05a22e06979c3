#!/usr/bin/env bash
# The README's first command: make the machine ready, then, all through the `agent-infra` CLI,
# bring both daemons up (detached, on their default loopback ports) with the offline demo stack
# (examples/demo-stack.toml), run tasks in containers and a sandbox session through the
# orchestrator, and show the state and the web console's address.
#   scripts/demo.sh        bring up and demo (leaves the daemons and the stack running)
#   scripts/demo.sh down   stop the stack, then the daemons the demo started (SIGTERM, graceful)
# examples/demo_workload.py does the same through the Python client.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Pid files and logs of the daemons `up` starts, and their data (env-manager/, orchestrator/).
STATE="$REPO/.state/demo"
CLI="$REPO/.venv/bin/agent-infra"

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ "${1:-up}" == "down" ]]; then
    if [[ ! -x "$CLI" ]]; then
        echo "nothing to stop: $CLI is not installed (run scripts/demo.sh first)" >&2
        exit 0
    fi
    # Exit code 3: nothing answered and nothing was recorded as started; that is "down" too.
    "$CLI" down --state-dir "$STATE" || [[ $? -eq 3 ]]
    exit 0
fi

bash "$REPO/scripts/bootstrap.sh"
cd "$REPO"

step "agent-infra up: the daemons (when not running) and the demo stack, in dependency order"
"$CLI" up --config examples/demo-stack.toml --state-dir "$STATE"

step "agent-infra status: services read back from the engine, the task queue per class"
"$CLI" status

step "agent-infra run: tasks in fresh containers (class cpu_short), through the orchestrator"
"$CLI" run -- sh -c 'printf "primes below 40:"; for n in $(seq 2 40); do f=1;
    for d in $(seq 2 $((n - 1))); do [ $((n % d)) -eq 0 ] && f=0 && break; done;
    [ $f -eq 1 ] && printf " %s" $n; done; echo'
"$CLI" run --set command='echo "$(uname -sr), $(nproc) cpus, network: $(ls /sys/class/net)"'
# A task's own failure is the command's exit code 1 (its stderr is shown):
if "$CLI" run -- sh -c 'echo "this task fails on purpose" >&2; exit 3'; then
    echo "demo: a failing task exited 0" >&2
    exit 1
fi

step "agent-infra sandbox: one container kept for many commands, its files kept between them"
SANDBOX="$("$CLI" sandbox create --ttl 300)"
"$CLI" sandbox exec "$SANDBOX" -- sh -c 'echo "written by the first command as $(id -un)" > note.txt'
"$CLI" sandbox exec "$SANDBOX" -- cat note.txt
"$CLI" sandbox rm "$SANDBOX"

step "agent-infra tasks: the newest tasks"
"$CLI" tasks --limit 3

step "agent-infra health"
"$CLI" health

step "agent-infra console: the web console, in a browser on this machine"
"$CLI" console

step "done: the stack and both daemons keep running; stop them with: scripts/demo.sh down"
echo "try: $CLI --help    (every command has --help with examples, and --json)" >&2
