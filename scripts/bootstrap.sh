#!/usr/bin/env bash
# Make this machine ready to run the stack and the tests.
#
#   a. Python venv at $REPO/.venv with `pip install -e "${REPO}[test]"` (skipped while
#      pyproject.toml is unchanged since the last successful install).
#   b. A Docker engine answering `docker info` (installs docker.io + busybox-static from
#      Debian's archive and starts dockerd when needed; needs root for that), and debootstrap
#      for the Debian base images scripts/build_image.sh makes; Debian's chromium and
#      chromium-driver for the web console's browser tests.
#   c. The local test image local/busybox:latest, built from the static busybox (no registry).
#
# Idempotent and fast when everything is already there. Run it, don't source it.
# Works without a tty or stdin (CI=true). Progress goes to stderr as `==> step` lines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STATE="$REPO/.state"
STAMP="$VENV/.agent-infra-install.sha256"
TEST_IMAGE="local/busybox:latest"
TEST_IMAGE_LABEL="org.agent-infra.image=test"
DEFAULT_DOCKER_HOST="unix:///var/run/docker.sock"
BUSYBOX="/bin/busybox"
DOCKER_WAIT_SECONDS=60

step() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bootstrap: error: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$STATE"

# One bootstrap at a time per checkout (concurrent pip installs into one venv break it).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE/bootstrap.lock"
    flock 9
fi

# ---------------------------------------------------------------------------------------
# apt helpers (Debian only; need root)
# ---------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    if [[ $EUID -ne 0 ]]; then
        die "need root to install $* (apt-get): re-run as root, or install them yourself"
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
    if [[ $APT_UPDATED -eq 0 ]]; then
        step "apt-get update"
        apt-get update -q </dev/null >&2
        APT_UPDATED=1
    fi
    step "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >&2
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ---------------------------------------------------------------------------------------
# a. Python venv
# ---------------------------------------------------------------------------------------
py_ok() { # PYTHON -> true when it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && py_ok "$VENV/bin/python"; then
        return
    fi
    if [[ -e "$VENV" ]]; then
        step "venv at $VENV is broken or too old: recreating it"
        rm -rf "$VENV"
    fi

    local py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        if [[ -z "${PYTHON:-}" && $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            apt_install python3 python3-venv
        else
            die "python3 not found: install Python >= 3.11 (Debian: apt-get install python3 python3-venv)"
        fi
    fi
    py="$(command -v "$py")"
    if ! py_ok "$py"; then
        die "$py is Python $("$py" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'); Python >= 3.11 is required (set PYTHON=/path/to/python3.11+)"
    fi
    # Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv.
    if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [[ "$py" == /usr/bin/python3* ]] && deb_installed python3; then
            apt_install python3-venv
        else
            die "$py cannot create venvs (no ensurepip/venv module): install its venv support"
        fi
    fi
    step "create venv $VENV ($("$py" -c 'import platform; print(platform.python_version())'))"
    "$py" -m venv "$VENV"
}

ensure_install() {
    local want have=""
    # The strict editable install links each module file into build/__editable__*, so a
    # module added or removed needs a re-install: the stamp covers the list of package files.
    want="$( { cat "$REPO/pyproject.toml"; cd "$REPO" && find services client -name '*.py*' \
        -not -path '*/__pycache__/*' | LC_ALL=C sort; } | sha256sum | cut -d' ' -f1)"
    [[ -f "$STAMP" ]] && have="$(<"$STAMP")"
    if [[ "$want" == "$have" ]]; then
        step "venv up to date (pyproject.toml and the package files unchanged)"
        return
    fi
    step "pip install -e \"${REPO}[test]\""
    rm -f "$STAMP"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e "${REPO}[test]" \
        --config-settings editable_mode=strict \
        </dev/null >&2
    printf '%s\n' "$want" >"$STAMP"
}

# ---------------------------------------------------------------------------------------
# b. Docker engine (+ busybox-static for the test image)
# ---------------------------------------------------------------------------------------
docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1 </dev/null
}

dockerd_running() {
    local pid
    [[ -r /var/run/docker.pid ]] || return 1
    pid="$(</var/run/docker.pid)"
    [[ -n "$pid" && -d "/proc/$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
}

wait_for_docker() { # [PID of the dockerd we started: fail fast when it dies]
    local pid="${1:-}" deadline=$((SECONDS + DOCKER_WAIT_SECONDS)) why=""
    until docker_ok; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            why="dockerd exited"
        elif ((SECONDS >= deadline)); then
            why="docker info did not answer within ${DOCKER_WAIT_SECONDS}s"
        fi
        if [[ -n "$why" ]]; then
            printf 'bootstrap: error: %s; tail of %s:\n' "$why" "$STATE/dockerd.log" >&2
            tail -n 40 "$STATE/dockerd.log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 1
    done
}

ensure_docker() {
    local pkgs=()
    local docker_up=0
    if docker_ok; then
        docker_up=1
        step "docker engine answers"
    elif ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        pkgs+=(docker.io)
    fi
    if ! deb_installed busybox-static; then
        pkgs+=(busybox-static)
    fi
    # A local registry (loopback only, run by the tests) for the image pull success path.
    if ! command -v docker-registry >/dev/null 2>&1; then
        pkgs+=(docker-registry)
    fi
    # systemd-analyze checks the units in deploy/systemd (systemd need not be PID 1).
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        pkgs+=(systemd)
    fi
    # debootstrap makes the Debian base images, as no image registry is reachable:
    # scripts/build_image.sh's (the compose image) and the systemd-as-PID-1 image of
    # tests/integration/test_systemd_deploy.py.
    if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -x /usr/sbin/debootstrap ]]; then
        pkgs+=(debootstrap)
    fi
    # The web console's browser tests (tests/integration/test_console_*.py) drive Debian's
    # Chromium through its chromedriver with selenium: no browser build is downloaded.
    if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
        pkgs+=(chromium chromium-driver)
    fi
    if ((${#pkgs[@]})); then
        apt_install "${pkgs[@]}"
    fi
    [[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing even though busybox-static is installed"

    ((docker_up)) && return
    # Installing docker.io may have started the engine through systemd.
    docker_ok && {
        step "docker engine answers"
        return
    }

    if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != "$DEFAULT_DOCKER_HOST" ]]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to let bootstrap start a local dockerd on $DEFAULT_DOCKER_HOST"
    fi
    [[ $EUID -eq 0 ]] || die "docker engine not reachable and starting dockerd needs root: re-run as root"

    local pid=""
    if dockerd_running; then
        step "dockerd (pid $(</var/run/docker.pid)) is running but not answering yet: waiting"
    else
        step "start dockerd (log: $STATE/dockerd.log)"
        # It must outlive this script without holding anything of ours: new session, stdin
        # from /dev/null, output to the log, every other inherited fd (our lock, a CI runner's
        # pipes) closed. No job control here, so setsid execs in place: $! is dockerd's pid.
        (
            for fd in /proc/"$BASHPID"/fd/*; do
                fd="${fd##*/}"
                if ((fd > 2)); then eval "exec $fd>&-"; fi
            done
            exec setsid dockerd --host "$DEFAULT_DOCKER_HOST"
        ) </dev/null >"$STATE/dockerd.log" 2>&1 &
        pid=$!
    fi
    wait_for_docker "$pid"
    step "docker engine answers"
}

# ---------------------------------------------------------------------------------------
# c. Test image local/busybox:latest
# ---------------------------------------------------------------------------------------
ensure_test_image() {
    if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1 </dev/null; then
        step "image $TEST_IMAGE present"
        return
    fi
    step "build image $TEST_IMAGE from $BUSYBOX"
    local tmp root applet
    umask 022
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    root="$tmp/rootfs"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    cp "$BUSYBOX" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ "$applet" == busybox ]] && continue
        ln -s busybox "$root/bin/$applet"
    done
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
        docker import \
            -c 'ENV PATH=/bin' \
            -c 'CMD ["sh"]' \
            -c "LABEL $TEST_IMAGE_LABEL" \
            -m "agent-infra test image (static busybox)" \
            - "$TEST_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    docker run --rm "$TEST_IMAGE" true </dev/null ||
        die "freshly built $TEST_IMAGE does not run"
}

start=$SECONDS
ensure_venv
ensure_install
ensure_docker
ensure_test_image
step "bootstrap done in $((SECONDS - start))s"
