#!/usr/bin/env bash
# Check an agent-infra install managed by systemd (see scripts/deploy_production.sh): one line
# per check, exit 0 only when every check passes.
#
#   verify_infrastructure.sh [--json] [--class CLASS] [--no-task] [--timeout SECS]
#
#   --json         one JSON document: {"ok": bool, "checks": [{"name", "ok", "detail"}]}
#   --class CLASS  workload class for the task round-trip (default cpu_short)
#   --no-task      skip the task round-trip (it starts a container)
#   --timeout SECS per-check timeout (default 60 for the task, 5 for the rest)
#
# Checks: units active; READY (Type=notify: active/running with the daemon's STATUS= text);
# grpc.health.v1 SERVING on both gRPC ports; both HTTP /health; the orchestrator's
# /queue/status; a trivial task submitted to the orchestrator, run by env-manager in a container.
# Addresses come from /etc/agent-infra/*.env (or the defaults). With a bearer token configured,
# export AGENT_INFRA_TOKEN_FILE (a file holding it) before running this.
set -euo pipefail

VENV=/opt/agent-infra/.venv
CONF=/etc/agent-infra
JSON=0 CLASS=cpu_short TASK=1 TIMEOUT=60

die() {
    printf 'verify_infrastructure: error: %s\n' "$*" >&2
    exit 2
}
while (($#)); do
    case "$1" in
    --json) JSON=1; shift ;;
    --class) CLASS="${2:?--class needs a name}"; shift 2 ;;
    --no-task) TASK=0; shift ;;
    --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
    -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
done
[[ -x "$VENV/bin/python" ]] || die "$VENV not found: install with scripts/deploy_production.sh"

env_value() { # FILE KEY DEFAULT
    local value=""
    [[ -r "$1" ]] && value="$(sed -n "s/^[[:space:]]*$2=//p" "$1" | tail -n 1 | tr -d "\"'")"
    printf '%s\n' "${value:-$3}"
}

UNIT_STATES="$(systemctl show -p Id -p ActiveState -p SubState -p StatusText \
    env-manager.service orchestrator.service dspy-agent.target 2>&1 || true)"

export VERIFY_JSON=$JSON VERIFY_CLASS=$CLASS VERIFY_TASK=$TASK VERIFY_TIMEOUT=$TIMEOUT
export VERIFY_UNITS="$UNIT_STATES"
export VERIFY_EM_GRPC VERIFY_EM_HTTP VERIFY_OR_GRPC VERIFY_OR_HTTP
VERIFY_EM_GRPC="$(env_value "$CONF/env-manager.env" ENV_MANAGER_GRPC_ADDR 127.0.0.1:50100)"
VERIFY_EM_HTTP="$(env_value "$CONF/env-manager.env" ENV_MANAGER_METRICS_ADDR 127.0.0.1:50101)"
VERIFY_OR_GRPC="$(env_value "$CONF/orchestrator.env" ORCHESTRATOR_GRPC_ADDR 127.0.0.1:50052)"
VERIFY_OR_HTTP="$(env_value "$CONF/orchestrator.env" ORCHESTRATOR_HTTP_ADDR 127.0.0.1:9097)"

exec "$VENV/bin/python" - <<'EOF'
import json
import os
import subprocess
import sys
import urllib.request
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

env = os.environ
checks: list[dict[str, object]] = []


def record(name: str, ok: bool, detail: str) -> None:
    checks.append({"name": name, "ok": ok, "detail": detail})
    if env["VERIFY_JSON"] != "1":
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def loopback(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


units: dict[str, dict[str, str]] = {}
current: dict[str, str] = {}
for line in env["VERIFY_UNITS"].splitlines() + [""]:
    if not line.strip():
        if "Id" in current:
            units[current["Id"]] = current
        current = {}
        continue
    key, _, value = line.partition("=")
    current[key] = value

for unit in ("env-manager.service", "orchestrator.service", "dspy-agent.target"):
    state = units.get(unit, {})
    active = state.get("ActiveState") == "active"
    record(f"unit {unit} active", active,
           f"{state.get('ActiveState', '?')} ({state.get('SubState', '?')})")
for unit in ("env-manager.service", "orchestrator.service"):
    state = units.get(unit, {})
    ready = state.get("SubState") == "running" and bool(state.get("StatusText"))
    record(f"unit {unit} READY", ready,
           f"status {state.get('StatusText') or '(none: READY=1 never arrived)'}")

quick = 5.0
for name, key in (("env-manager", "VERIFY_EM_GRPC"), ("orchestrator", "VERIFY_OR_GRPC")):
    addr = loopback(env[key])
    try:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=quick)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        record(f"{name} grpc.health.v1 {addr}", status == "SERVING", status)
    except grpc.RpcError as exc:
        record(f"{name} grpc.health.v1 {addr}", False, f"{exc.code().name}: {exc.details()}")

for name, key, path in (("env-manager", "VERIFY_EM_HTTP", "/health"),
                        ("orchestrator", "VERIFY_OR_HTTP", "/health"),
                        ("orchestrator", "VERIFY_OR_HTTP", "/queue/status")):
    url = f"http://{loopback(env[key])}{path}"
    try:
        with urllib.request.urlopen(url, timeout=quick) as reply:
            body = reply.read(300).decode(errors="replace").strip()
            record(f"{name} {path}", reply.status == 200, f"{reply.status} {body[:120]}")
    except Exception as exc:  # noqa: BLE001 - every failure is a failed check
        record(f"{name} {path}", False, f"{url}: {exc}")

if env["VERIFY_TASK"] == "1":
    marker = f"verify-{uuid.uuid4().hex[:8]}"
    cli = os.path.join(os.path.dirname(sys.executable), "agent-infra")
    command = [cli, "--orchestrator", loopback(env["VERIFY_OR_GRPC"]),
               "--env-manager", loopback(env["VERIFY_EM_GRPC"]), "run",
               "--class", env["VERIFY_CLASS"], "--wait-timeout", env["VERIFY_TIMEOUT"],
               "--", "echo", marker]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=float(env["VERIFY_TIMEOUT"]) + 15)
        ok = done.returncode == 0 and marker in done.stdout
        detail = (f"class {env['VERIFY_CLASS']}: container printed {marker}" if ok else
                  f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}")
    except subprocess.TimeoutExpired:
        ok, detail = False, f"no result within {env['VERIFY_TIMEOUT']}s"
    record("task round-trip (orchestrator -> env-manager -> container)", ok, detail)

ok = all(check["ok"] for check in checks)
if env["VERIFY_JSON"] == "1":
    print(json.dumps({"ok": ok, "checks": checks}, indent=2))
else:
    print(f"{'all checks passed' if ok else 'FAILED'}: "
          f"{sum(1 for c in checks if c['ok'])}/{len(checks)}")
sys.exit(0 if ok else 1)
EOF
