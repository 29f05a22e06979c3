#!/usr/bin/env bash
# The README's first command: make the machine ready, bring both daemons up (detached, on their
# default loopback ports) and show them working through grpcurl and HTTP.
#   scripts/demo.sh        bring up and demo (leaves the daemons running)
#   scripts/demo.sh down   stop them (SIGTERM, graceful)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.state/demo"
BIN="$REPO/.venv/bin"
mkdir -p "$STATE"

step() { printf '\n==> %s\n' "$*" >&2; }

stop_daemon() {
    local name=$1 pidfile="$STATE/$1.pid"
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "$name stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

if [[ "${1:-up}" == "down" ]]; then
    if [[ -f "$STATE/env-manager.pid" ]]; then
        "$BIN/python" "$REPO/examples/demo_workload.py" --stop || true
    fi
    stop_daemon orchestrator
    stop_daemon env-manager
    exit 0
fi

bash "$REPO/scripts/bootstrap.sh"

start_daemon() {
    local name=$1 addr=$2
    if "$BIN/grpcurl" -plaintext -max-time 2 "$addr" grpc.health.v1.Health/Check >/dev/null 2>&1
    then
        echo "$name already answers on $addr"
        return 0
    fi
    setsid env "${@:3}" "$BIN/$name" --log-format json >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
    for _ in $(seq 1 100); do
        if "$BIN/grpcurl" -plaintext -max-time 1 "$addr" grpc.health.v1.Health/Check 2>/dev/null \
            | grep -q SERVING; then
            echo "$name serving on $addr (pid $(cat "$STATE/$name.pid"), log $STATE/$name.log)"
            return 0
        fi
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    tail -20 "$STATE/$name.log" >&2
    exit 1
}

step "starting the daemons"
start_daemon env-manager 127.0.0.1:50100 \
    "ENV_MANAGER_CONFIG=$REPO/examples/demo-stack.toml" "ENV_MANAGER_STATE_DIR=$STATE/env-manager"
start_daemon orchestrator 127.0.0.1:50052

step "grpcurl list (server reflection, no .proto files needed)"
"$BIN/grpcurl" -plaintext 127.0.0.1:50100 list
"$BIN/grpcurl" -plaintext 127.0.0.1:50052 grpc.health.v1.Health/Check

step "the demo workload: the offline stack and task containers, through the Python client"
(cd "$REPO" && "$BIN/python" examples/demo_workload.py)

step "done: the stack and both daemons keep running; stop them with: scripts/demo.sh down"
