#!/usr/bin/env bash
# Build the daemons' container image, agent-infra:local (used by docker-compose.yml, whose
# default configuration deploy/compose/env-manager.toml also runs tasks in it).
#
#   scripts/build_image.sh [--mirror URL] [--image NAME] [--rebuild] [--rebuild-base]
#
#   1. the base image local/debian-python:bookworm, made with debootstrap (no registry is
#      reachable here; installs debootstrap from Debian's archive if needed);
#   2. wheels of this project and all its runtime dependencies, built on the host
#      (pip inside `docker build` cannot reach PyPI);
#   3. `docker build` from Dockerfile, sending only Dockerfile + the wheels as the context.
#
# Both images are cached by content (and the dependency layer by Docker's own layer cache: the
# install stage stays tagged as local/agent-infra-build:install): each carries the hash of what it is built from as the
# label org.agent-infra.inputs, and a build whose inputs hash to the label of the image already
# there is skipped. The base image's inputs are the suite, variant and package list (the recipe
# below); the daemon image's are the Dockerfile, pyproject.toml, README.md, every file under
# services/ and client/, the base image's id and the host's Python version. A second run with
# nothing changed takes under a second. Dependencies are resolved from PyPI once per dependency
# list (scripts/wheelhouse.py, under .state/wheelhouse/); to take newer releases without a
# change of ours, remove .state/wheelhouse/ and run with --rebuild.
#
# The Debian mirror is never written here: --mirror URL (or DEBIAN_MIRROR) when given, else the
# one this host's apt is configured with (`apt-get indextargets`, i.e. /etc/apt/sources.list and
# sources.list.d). It is only needed when the base image is (re)built.
#
# Environment: IMAGE (default agent-infra:local), DEBIAN_MIRROR, REBUILD=1, REBUILD_BASE=1.
# Needs root for debootstrap (step 1 only) and a venv at .venv (scripts/bootstrap.sh makes it).
# Progress goes to stderr as `==> [  Ns] step` lines; the image name goes to stdout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
STATE="$REPO/.state"
BASE_IMAGE="local/debian-python:bookworm"
INSTALL_STAGE="local/agent-infra-build:install"
IMAGE="${IMAGE:-agent-infra:local}"
MIRROR="${DEBIAN_MIRROR:-}"
REBUILD="${REBUILD:-0}"
REBUILD_BASE="${REBUILD_BASE:-0}"
INPUTS_LABEL="org.agent-infra.inputs"
# The base image's recipe: change any of these and its hash (so the cached image) changes.
SUITE="bookworm"
VARIANT="minbase"
INCLUDE="python3,python3-venv"
BASE_RECIPE_VERSION=2
# What goes into the wheel and the image (paths relative to the repository).
SOURCES=(Dockerfile pyproject.toml README.md services client)
start=$SECONDS

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
step() { printf '==> [%3ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
die() {
    printf 'build_image: error: %s\n' "$*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
    --mirror) MIRROR="${2:?--mirror needs a URL}"; shift 2 ;;
    --mirror=*) MIRROR="${1#*=}"; shift ;;
    --image) IMAGE="${2:?--image needs a name}"; shift 2 ;;
    --image=*) IMAGE="${1#*=}"; shift ;;
    --rebuild) REBUILD=1; shift ;;
    --rebuild-base) REBUILD_BASE=1; REBUILD=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "docker not found (scripts/bootstrap.sh installs it)"
timeout 20 docker info >/dev/null 2>&1 </dev/null ||
    die "docker engine does not answer (is dockerd running? may this user use /var/run/docker.sock?)"
[[ -x "$PY" ]] || die "$PY missing: run scripts/bootstrap.sh first"

mkdir -p "$STATE"
# One build at a time per checkout: two would race on the same tags and wheelhouse.
if command -v flock >/dev/null 2>&1; then
    exec 8>"$STATE/build_image.lock"
    flock 8
fi

image_label() { # IMAGE -> the inputs label, empty when the image or label is missing
    docker image inspect -f "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$1" 2>/dev/null </dev/null |
        sed 's/^<no value>$//' || true
}

# ---------------------------------------------------------------------------------------
# The Debian mirror: explicit, or from this host's apt configuration
# ---------------------------------------------------------------------------------------
host_mirror() {
    command -v apt-get >/dev/null 2>&1 || return 0
    local uri filter
    # The archive entry for our suite as written in the sources; then, from downloaded lists,
    # the one whose codename it is; then any main-archive entry (a Debian mirror serves every
    # release), never an -updates or -security one.
    for filter in "Release: $SUITE" "Codename: $SUITE"; do
        uri="$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' \
            'Component: main' "$filter" 2>/dev/null </dev/null | head -n 1)"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" ]]; then
        uri="$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' \
            'Component: main' 2>/dev/null </dev/null | awk '$1 !~ /-/ { print $2; exit }')"
    fi
    printf '%s' "${uri%/}"
}

# ---------------------------------------------------------------------------------------
# 1. Base image: minimal Debian with python3 + venv, from debootstrap
# ---------------------------------------------------------------------------------------
base_inputs_hash() {
    printf 'recipe %s\nsuite %s\nvariant %s\ninclude %s\narch %s\n' "$BASE_RECIPE_VERSION" \
        "$SUITE" "$VARIANT" "$INCLUDE" "$(uname -m)" | sha256sum | cut -c1-32
}

ensure_base_image() {
    local want
    want="$(base_inputs_hash)"
    if [[ "$REBUILD_BASE" != 1 && "$(image_label "$BASE_IMAGE")" == "$want" ]]; then
        step "base image $BASE_IMAGE up to date (inputs ${want:0:12})"
        return
    fi
    [[ $EUID -eq 0 ]] || die "building $BASE_IMAGE with debootstrap needs root"
    if [[ -z "$MIRROR" ]]; then
        MIRROR="$(host_mirror)"
        [[ -n "$MIRROR" ]] ||
            die "no Debian mirror in this host's apt configuration: pass --mirror URL (or DEBIAN_MIRROR)"
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "debootstrap not found and no apt-get to install it"
        step "apt-get install debootstrap"
        apt-get update -q </dev/null >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap </dev/null >&2
    fi
    local tmp root old_id
    old_id="$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null </dev/null || true)"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    root="$tmp/rootfs"
    step "debootstrap $SUITE ($VARIANT + $INCLUDE) from $MIRROR"
    debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" \
        </dev/null >"$tmp/debootstrap.log" 2>&1 || {
        tail -n 40 "$tmp/debootstrap.log" >&2
        die "debootstrap from $MIRROR failed (another mirror: --mirror URL)"
    }
    # Package caches are dead weight in an image; the mirror the image was made from is this
    # host's business, not the image's.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    step "import $BASE_IMAGE"
    tar -C "$root" --numeric-owner -c . |
        docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LANG=C.UTF-8' \
            -c 'CMD ["/bin/bash"]' \
            -c "LABEL $INPUTS_LABEL=$want" \
            -m "debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE" \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 </dev/null || true
    fi
}

# ---------------------------------------------------------------------------------------
# 2. Inputs of the daemon image, and the wheels built on the host
# ---------------------------------------------------------------------------------------
image_inputs_hash() {
    local host_py base_id
    host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    base_id="$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" </dev/null)"
    {
        printf 'base %s\npython %s\n' "$base_id" "$host_py"
        # Every file, by path and content (NUL-separated, sorted bytewise); no caches.
        (cd "$REPO" && find "${SOURCES[@]}" -type f -not -path '*/__pycache__/*' \
            -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-32
}

build_wheels() { # DIR: DIR/deps (every dependency, cached), DIR/project (this project)
    local out="$1" host_py image_py src deps
    # Binary wheels are tagged for one Python minor version: the host's must match the image's.
    host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    image_py="$(docker run --rm --network none "$BASE_IMAGE" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' </dev/null)"
    [[ "$host_py" == "$image_py" ]] ||
        die "host venv has Python $host_py but $BASE_IMAGE has $image_py: wheels would not install"
    step "dependency wheels (scripts/wheelhouse.py: built once per dependency list)"
    deps="$("$PY" "$REPO/scripts/wheelhouse.py")" || die "could not build the dependency wheels"
    mkdir -p "$out/deps"
    # Links, not copies: same content, so docker's layer cache still matches.
    cp -l "$deps"/* "$out/deps/" 2>/dev/null || cp "$deps"/* "$out/deps/"
    # From a copy: an in-tree build writes build/ and *.egg-info into the checkout.
    src="$(mktemp -d)"
    (cd "$REPO" && tar -c --exclude=__pycache__ --exclude='*.egg-info' \
        pyproject.toml README.md services client) | tar -C "$src" -x
    step "pip wheel agent-infra (Python $host_py)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip wheel -q --no-deps --no-index \
        --find-links "$deps" "$src" -w "$out/project" </dev/null >&2 || {
        rm -rf "$src"
        die "pip wheel of this project failed"
    }
    rm -rf "$src"
}

# ---------------------------------------------------------------------------------------
# 3. The image
# ---------------------------------------------------------------------------------------
ensure_image() {
    local want old_id new_id context
    want="$(image_inputs_hash)"
    if [[ "$REBUILD" != 1 && "$(image_label "$IMAGE")" == "$want" ]]; then
        step "image $IMAGE up to date (inputs ${want:0:12})"
        return
    fi
    context="$STATE/image-context"
    rm -rf "$context"
    mkdir -p "$context"
    cp "$REPO/Dockerfile" "$context/Dockerfile"
    build_wheels "$context/wheelhouse"
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null </dev/null || true)"
    step "docker build -t $IMAGE (inputs ${want:0:12})"
    # The install stage first, tagged: its dependency layer is the cache the next build of a
    # code change reuses (untagged, it would be pruned below). Only what the Dockerfile uses
    # goes to the engine (not .venv, .git, ...).
    : >"$STATE/build_image.log"
    tar -C "$context" -c Dockerfile wheelhouse |
        docker build --target install -t "$INSTALL_STAGE" - >>"$STATE/build_image.log" 2>&1 &&
        tar -C "$context" -c Dockerfile wheelhouse |
        docker build --label "$INPUTS_LABEL=$want" -t "$IMAGE" - >>"$STATE/build_image.log" 2>&1 || {
        tail -n 40 "$STATE/build_image.log" >&2
        die "docker build failed (whole log: $STATE/build_image.log)"
    }
    rm -rf "$context"
    # Install stages a newer build replaced are left untagged: drop them.
    docker image prune -f --filter label=org.agent-infra.stage=install >/dev/null </dev/null
    docker run --rm --network none "$IMAGE" env-manager --version </dev/null >&2 ||
        die "the freshly built $IMAGE does not run env-manager --version"
    # Drop the image this build replaced (kept while a container still uses it).
    new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" </dev/null)"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 </dev/null ||
            step "previous $IMAGE ${old_id:7:12} still in use: kept"
    fi
}

ensure_base_image
ensure_image
step "$IMAGE ready in $((SECONDS - start))s"
printf '%s\n' "$IMAGE"
