#!/usr/bin/env bash
# Build the daemons' container image, agent-infra:local (used by docker-compose.yml).
#
#   1. the base image local/debian-python:bookworm, made with debootstrap when it is missing
#      (no registry is reachable here; installs debootstrap from Debian's archive if needed);
#   2. wheels of this project and all its runtime dependencies, built on the host into
#      wheelhouse/ (pip inside `docker build` cannot reach PyPI);
#   3. `docker build` from Dockerfile, sending only Dockerfile + wheelhouse/ as the context.
#
# Environment: IMAGE (default agent-infra:local), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# REBUILD_BASE=1 to remake the base image. Needs root for debootstrap (step 1 only) and a venv at
# .venv (scripts/bootstrap.sh makes it). Progress goes to stderr as `==> step` lines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
WHEELHOUSE="$REPO/wheelhouse"
BASE_IMAGE="local/debian-python:bookworm"
IMAGE="${IMAGE:-agent-infra:local}"
SUITE="bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
start=$SECONDS
OLD_BASE_ID=""

step() { printf '==> [%3ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
die() {
    printf 'build_image: error: %s\n' "$*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "docker not found (scripts/bootstrap.sh installs it)"
timeout 20 docker info >/dev/null 2>&1 </dev/null || die "docker engine does not answer"
[[ -x "$PY" ]] || die "$PY missing: run scripts/bootstrap.sh first"

# ---------------------------------------------------------------------------------------
# 1. Base image: minimal Debian with python3 + venv, from debootstrap
# ---------------------------------------------------------------------------------------
ensure_base_image() {
    if [[ "${REBUILD_BASE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step "base image $BASE_IMAGE present"
        return
    fi
    [[ $EUID -eq 0 ]] || die "building $BASE_IMAGE with debootstrap needs root"
    if ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "debootstrap not found and no apt-get to install it"
        step "apt-get install debootstrap"
        apt-get update -q </dev/null >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap </dev/null >&2
    fi
    local tmp root
    OLD_BASE_ID="$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    root="$tmp/rootfs"
    step "debootstrap $SUITE (minbase + python3, python3-venv) from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$root" "$MIRROR" \
        </dev/null >"$tmp/debootstrap.log" 2>&1 || {
        tail -n 40 "$tmp/debootstrap.log" >&2
        die "debootstrap failed"
    }
    # Package caches are dead weight in an image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    step "import $BASE_IMAGE"
    tar -C "$root" --numeric-owner -c . |
        docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LANG=C.UTF-8' \
            -c 'CMD ["/bin/bash"]' \
            -m "debootstrap --variant=minbase --include=python3,python3-venv $SUITE" \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
}

# ---------------------------------------------------------------------------------------
# 2. Wheels on the host
# ---------------------------------------------------------------------------------------
build_wheels() {
    # Binary wheels are tagged for one Python minor version: the host's must match the image's.
    local host_py image_py
    host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    image_py="$(docker run --rm --network none "$BASE_IMAGE" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' </dev/null)"
    [[ "$host_py" == "$image_py" ]] ||
        die "host venv has Python $host_py but $BASE_IMAGE has $image_py: wheels would not install"
    step "pip wheel . -> wheelhouse/ (Python $host_py)"
    rm -rf "$WHEELHOUSE"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip wheel -q "$REPO" -w "$WHEELHOUSE" </dev/null >&2
}

# ---------------------------------------------------------------------------------------
# 3. The image
# ---------------------------------------------------------------------------------------
build_image() {
    local old_id new_id
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    step "docker build -t $IMAGE"
    # Only what the Dockerfile uses goes to the engine (not .venv, .git, ...).
    tar -C "$REPO" -c Dockerfile wheelhouse | docker build -t "$IMAGE" - >&2
    # The legacy builder leaves the install stage behind as a dangling image.
    docker image prune -f --filter label=org.agent-infra.stage=install >/dev/null
    docker run --rm --network none "$IMAGE" env-manager --version </dev/null >&2
    # Drop the images this build replaced (kept when a container still uses them).
    new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 || step "previous $IMAGE ${old_id:7:12} still in use: kept"
    fi
    if [[ -n "$OLD_BASE_ID" ]]; then
        docker rmi "$OLD_BASE_ID" >/dev/null 2>&1 || true
    fi
}

ensure_base_image
build_wheels
build_image
step "built $IMAGE in $((SECONDS - start))s"
