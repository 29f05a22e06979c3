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
    setsid "$BIN/$name" --log-format json >"$STATE/$name.log" 2>&1 </dev/null &
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
start_daemon env-manager 127.0.0.1:50100
start_daemon orchestrator 127.0.0.1:50052

step "grpcurl list (server reflection, no .proto files needed)"
"$BIN/grpcurl" -plaintext 127.0.0.1:50100 list
"$BIN/grpcurl" -plaintext 127.0.0.1:50052 list

step "grpc.health.v1 Check"
"$BIN/grpcurl" -plaintext 127.0.0.1:50100 grpc.health.v1.Health/Check
"$BIN/grpcurl" -plaintext 127.0.0.1:50052 grpc.health.v1.Health/Check

step "HTTP /health and a few /metrics lines"
"$BIN/python" - <<'EOF'
import json, urllib.request
for name, port in (("env-manager", 50101), ("orchestrator", 9097)):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        print(name, json.loads(r.read()))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = [l for l in r.read().decode().splitlines() if l.startswith("grpc_server_handled")]
        print("\n".join(lines[:3]))
EOF

step "a workload container on the local Docker engine"
docker run --rm --label org.agent-infra.demo=1 local/busybox:latest \
    sh -c 'echo "hello from a task container on $(uname -sr)"'

step "done: both daemons keep running; stop them with: scripts/demo.sh down"
