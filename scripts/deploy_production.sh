#!/usr/bin/env bash
# Install (or upgrade, or remove) an agent-infra release on this host, managed by systemd.
#
#   deploy_production.sh [--wheel FILE | --wheelhouse DIR] [--upgrade]
#   deploy_production.sh --uninstall [--purge]
#
#   (no source)      build a wheel from this checkout, install it and its deps from the
#                    host's configured package index
#   --wheel FILE     install this agent-infra wheel (deps from the index, or --wheelhouse)
#   --wheelhouse DIR offline: agent-infra and every dependency from DIR (no index)
#   --upgrade        replace the venv with the given release and restart the daemons
#   --uninstall      stop and disable the stack, remove the units and the venv; state
#                    (/var/lib/agent-infra) and config (/etc/agent-infra) are kept
#   --purge          with --uninstall: remove state and config too
#   --timeout SECS   how long to wait for both daemons to be healthy (default 90)
#
# What it does: venv at /opt/agent-infra/.venv, units + dspy-agent.target into
# /etc/systemd/system, example config into /etc/agent-infra only where none exists (a config of
# yours is never overwritten), daemon-reload, enable + start dspy-agent.target, then waits for
# both /health endpoints. A second run with the same release changes nothing and says so.
# Run as root. Progress goes to stderr as `==> step` lines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/agent-infra
VENV="$PREFIX/.venv"
STAMP="$PREFIX/release.sha256"
UNIT_SRC="$REPO/deploy/systemd"
UNIT_DST=/etc/systemd/system
CONF=/etc/agent-infra
TARGET=dspy-agent.target
SERVICES=(env-manager.service orchestrator.service)
UNITS=("${SERVICES[@]}" "$TARGET")
PYTHON="${PYTHON:-python3}"

WHEEL="" WHEELHOUSE="" UPGRADE=0 UNINSTALL=0 PURGE=0 TIMEOUT=90
CHANGED=0

step() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'deploy_production: error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
    --wheel) WHEEL="${2:?--wheel needs a file}"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --upgrade) UPGRADE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
((PURGE == 0 || UNINSTALL == 1)) || die "--purge goes with --uninstall"

# ---------------------------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "must run as root (it installs into /opt, /etc and /etc/systemd/system): sudo $0 $*"
command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this host has no systemd"
[[ -d /run/systemd/system ]] ||
    die "systemd is not running as the init system (no /run/systemd/system): use docker-compose.yml instead"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python >= 3.11 (Debian: apt-get install python3 python3-venv)"

unit_active() { systemctl is-active --quiet "$1"; }

# ---------------------------------------------------------------------------------------------
# --uninstall
# ---------------------------------------------------------------------------------------------
if ((UNINSTALL)); then
    step "stop and disable $TARGET ${SERVICES[*]}"
    systemctl disable --now "$TARGET" "${SERVICES[@]}" >&2 2>/dev/null || true
    # Only an explicit stop of each daemon waits for it to exit (see dspy-agent.target).
    systemctl stop "$TARGET" "${SERVICES[@]}" >&2 2>/dev/null || true
    for unit in "${UNITS[@]}"; do
        rm -f "$UNIT_DST/$unit"
        rm -rf "$UNIT_DST/$unit.d"
    done
    systemctl daemon-reload
    systemctl reset-failed "${UNITS[@]}" 2>/dev/null || true
    step "remove $PREFIX"
    rm -rf "$PREFIX"
    if ((PURGE)); then
        step "purge state and config: /var/lib/agent-infra $CONF"
        rm -rf /var/lib/agent-infra /var/lib/private/agent-infra "$CONF"
    else
        step "kept state (/var/lib/agent-infra) and config ($CONF); --purge removes them"
    fi
    step "uninstalled"
    exit 0
fi

# Docker engine: env-manager runs every service and task container on it.
docker_ping() {
    "$PYTHON" - "${DOCKER_HOST:-unix:///var/run/docker.sock}" <<'EOF'
import socket, sys
url = sys.argv[1]
if url.startswith("unix://"):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    target = url[len("unix://"):]
elif url.startswith("tcp://"):
    host, _, port = url[len("tcp://"):].rstrip("/").rpartition(":")
    sock, target = socket.socket(), (host, int(port))
else:
    sys.exit(f"unsupported DOCKER_HOST {url}")
sock.settimeout(5)
try:
    sock.connect(target)
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    reply = sock.recv(4096)
except OSError as exc:
    sys.exit(f"{url}: {exc}")
if b" 200 " not in reply.split(b"\r\n", 1)[0]:
    sys.exit(f"{url}: unexpected answer {reply[:80]!r}")
EOF
}
why="$(docker_ping 2>&1)" ||
    die "no Docker engine answers ($why): install and start it (Debian: apt-get install docker.io; systemctl enable --now docker)"

# The addresses the daemons will listen on: the env files (if any) or the defaults.
env_value() { # FILE KEY DEFAULT
    local value=""
    [[ -f "$1" ]] && value="$(sed -n "s/^[[:space:]]*$2=//p" "$1" | tail -n 1 | tr -d "\"'")"
    printf '%s\n' "${value:-$3}"
}
EM_GRPC="$(env_value "$CONF/env-manager.env" ENV_MANAGER_GRPC_ADDR 127.0.0.1:50100)"
EM_HTTP="$(env_value "$CONF/env-manager.env" ENV_MANAGER_METRICS_ADDR 127.0.0.1:50101)"
OR_GRPC="$(env_value "$CONF/orchestrator.env" ORCHESTRATOR_GRPC_ADDR 127.0.0.1:50052)"
OR_HTTP="$(env_value "$CONF/orchestrator.env" ORCHESTRATOR_HTTP_ADDR 127.0.0.1:9097)"

port_free() { # HOST:PORT -> 0 when it can be bound
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
host = host.strip("[]") or "0.0.0.0"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as sock:
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sys.exit(str(exc))
EOF
}
check_ports() { # UNIT ADDR...: only when that daemon is not already ours and running
    local unit="$1" addr why
    shift
    unit_active "$unit" && return 0
    for addr in "$@"; do
        why="$(port_free "$addr" 2>&1)" ||
            die "port in use: $addr (for $unit: $why); see what holds it with \`ss -ltnp\`, stop it or set another address in $CONF/${unit%.service}.env"
    done
}
check_ports env-manager.service "$EM_GRPC" "$EM_HTTP"
check_ports orchestrator.service "$OR_GRPC" "$OR_HTTP"

# ---------------------------------------------------------------------------------------------
# The release: one wheel of agent-infra (+ where its dependencies come from)
# ---------------------------------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PIP_SOURCE=()
if [[ -n "$WHEELHOUSE" ]]; then
    [[ -d "$WHEELHOUSE" ]] || die "--wheelhouse $WHEELHOUSE is not a directory"
    PIP_SOURCE=(--no-index --find-links "$WHEELHOUSE")
fi
if [[ -z "$WHEEL" ]]; then
    if [[ -n "$WHEELHOUSE" ]]; then
        mapfile -t found < <(find "$WHEELHOUSE" -maxdepth 1 -name 'agent_infra-*.whl' | LC_ALL=C sort -V)
        ((${#found[@]})) || die "no agent_infra-*.whl in $WHEELHOUSE"
        WHEEL="${found[-1]}"
    else
        [[ -f "$REPO/pyproject.toml" ]] || die "no --wheel/--wheelhouse and no checkout at $REPO to build from"
        step "build a wheel from $REPO"
        "$PYTHON" -m venv "$WORK/build-venv"
        "$WORK/build-venv/bin/pip" wheel -q --no-deps "$REPO" -w "$WORK" >&2 ||
            die "building the wheel failed (needs the host's package index for setuptools)"
        WHEEL="$(find "$WORK" -maxdepth 1 -name 'agent_infra-*.whl' | head -n 1)"
    fi
fi
[[ -f "$WHEEL" ]] || die "wheel $WHEEL not found"
RELEASE="$(sha256sum "$WHEEL" | cut -d' ' -f1)"

# ---------------------------------------------------------------------------------------------
# venv
# ---------------------------------------------------------------------------------------------
installed=""
[[ -f "$STAMP" && -x "$VENV/bin/env-manager" && -x "$VENV/bin/orchestrator" ]] && installed="$(<"$STAMP")"
if [[ -n "$installed" && "$installed" != "$RELEASE" && $UPGRADE -eq 0 ]]; then
    die "another release is installed in $VENV ($(basename "$WHEEL") differs): pass --upgrade to replace it"
fi
if [[ "$installed" != "$RELEASE" ]] || ((UPGRADE)); then
    step "install $(basename "$WHEEL") into $VENV"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "$PYTHON cannot create venvs: apt-get install python3-venv"
    install -d -m 0755 "$PREFIX"
    rm -rf "$VENV" "$STAMP"
    "$PYTHON" -m venv "$VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q "${PIP_SOURCE[@]}" "$WHEEL" >&2 ||
        die "pip install of $WHEEL failed (offline? pass --wheelhouse DIR with every dependency)"
    "$VENV/bin/env-manager" --version >/dev/null || die "$VENV/bin/env-manager does not run"
    printf '%s\n' "$RELEASE" >"$STAMP"
    CHANGED=1
else
    step "venv $VENV already holds this release"
fi

# Documentation= in the units points here.
install -d -m 0755 "$PREFIX/deploy/systemd"
if ! cmp -s "$UNIT_SRC/README.md" "$PREFIX/deploy/systemd/README.md"; then
    install -m 0644 "$UNIT_SRC/README.md" "$PREFIX/deploy/systemd/README.md"
fi

# ---------------------------------------------------------------------------------------------
# Units and config
# ---------------------------------------------------------------------------------------------
UNITS_CHANGED=0
for unit in "${UNITS[@]}"; do
    if ! cmp -s "$UNIT_SRC/$unit" "$UNIT_DST/$unit"; then
        step "install $UNIT_DST/$unit"
        install -m 0644 "$UNIT_SRC/$unit" "$UNIT_DST/$unit"
        UNITS_CHANGED=1
    fi
done

install -d -m 0755 "$CONF"
write_example() { # FILE MODE (content on stdin): only where none exists
    if [[ -e "$1" ]]; then
        cat >/dev/null
        return
    fi
    step "write example $1"
    (umask 077 && cat >"$1")
    chmod "$2" "$1"
    CHANGED=1
}
write_example "$CONF/env-manager.env" 0600 <<EOF
# Read by systemd (as root) for env-manager.service. Uncomment ENV_MANAGER_CONFIG once the TOML
# file exists: a config path naming a missing file is a startup error (exit 2).
# ENV_MANAGER_CONFIG=$CONF/env-manager.toml
ENV_MANAGER_GRPC_ADDR=$EM_GRPC
ENV_MANAGER_METRICS_ADDR=$EM_HTTP
ENV_MANAGER_LOG_LEVEL=info
EOF
write_example "$CONF/orchestrator.env" 0600 <<EOF
# Read by systemd (as root) for orchestrator.service. Uncomment ORCHESTRATOR_CONFIG once the TOML
# file exists (keep it 0644: the orchestrator runs as a dynamic user and reads it itself).
# ORCHESTRATOR_CONFIG=$CONF/orchestrator.toml
ORCHESTRATOR_GRPC_ADDR=$OR_GRPC
ORCHESTRATOR_HTTP_ADDR=$OR_HTTP
ORCHESTRATOR_LOG_LEVEL=info
EOF
if [[ -f "$REPO/examples/agent-stack.toml" ]]; then
    write_example "$CONF/env-manager.toml.example" 0644 <"$REPO/examples/agent-stack.toml"
fi

if ((UNITS_CHANGED)); then
    step "systemctl daemon-reload"
    systemctl daemon-reload
    CHANGED=1
fi
if [[ "$(systemctl is-enabled "$TARGET" 2>/dev/null)" != enabled ]] ||
    [[ "$(systemctl is-enabled env-manager.service 2>/dev/null)" != enabled ]]; then
    step "systemctl enable $TARGET"
    systemctl enable "$TARGET" >&2 2>/dev/null || systemctl enable "$TARGET" >&2
    CHANGED=1
fi

# ---------------------------------------------------------------------------------------------
# Start (or restart on a changed release) and wait for health
# ---------------------------------------------------------------------------------------------
all_active() { unit_active env-manager.service && unit_active orchestrator.service && unit_active "$TARGET"; }
if ((CHANGED)) && all_active; then
    step "restart $TARGET (release or units changed)"
    systemctl restart "$TARGET" >&2 || true
elif ! all_active; then
    step "systemctl start $TARGET"
    systemctl start "$TARGET" >&2 || true
    CHANGED=1
fi

health_url() { # HOST:PORT -> URL (a wildcard listen address is checked on loopback)
    local host="${1%:*}" port="${1##*:}"
    case "$host" in "" | 0.0.0.0) host=127.0.0.1 ;; "[::]" | "::") host="[::1]" ;; esac
    printf 'http://%s:%s/health\n' "$host" "$port"
}
wait_healthy() {
    "$VENV/bin/python" - "$TIMEOUT" "$(health_url "$EM_HTTP")" "$(health_url "$OR_HTTP")" <<'EOF'
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
pending = set(sys.argv[2:])
last = {}
while pending and time.monotonic() < deadline:
    for url in sorted(pending):
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                if reply.status == 200:
                    pending.discard(url)
        except Exception as exc:  # noqa: BLE001 - any failure means not healthy yet
            last[url] = str(exc)
    time.sleep(0.5)
for url in sorted(pending):
    print(f"{url}: {last.get(url, 'no answer')}", file=sys.stderr)
sys.exit(1 if pending else 0)
EOF
}
for svc in "${SERVICES[@]}"; do
    if ! unit_active "$svc"; then
        systemctl --no-pager --lines=0 status "$svc" >&2 || true
        journalctl --no-pager -u "$svc" -n 15 -o cat >&2 || true
        die "$svc did not start (exit status 2 = bad configuration, see the lines above; READY never arriving: journalctl -u $svc)"
    fi
done
step "wait for both daemons to be healthy (up to ${TIMEOUT}s)"
wait_healthy || die "the daemons did not become healthy within ${TIMEOUT}s: journalctl -u env-manager -u orchestrator"

if ((CHANGED)); then
    step "installed: $TARGET active, env-manager $EM_GRPC, orchestrator $OR_GRPC (check with scripts/verify_infrastructure.sh)"
else
    step "nothing to change: this release is installed, configured and running"
fi
