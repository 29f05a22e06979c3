#!/usr/bin/env bash
# The project's test command: bootstrap the machine, lint (ruff), type-check (mypy),
# then run pytest with any arguments given, e.g.
#   scripts/test.sh
#   scripts/test.sh tests/integration/test_docker_harness.py -k echo
# All three checks run even when an earlier one fails; the exit code is pytest's when it
# failed, else 1 when ruff or mypy failed, else 0. "No tests collected" counts as a failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="$REPO/.venv/bin/python"
start=$SECONDS

step() { printf '==> %s\n' "$*" >&2; }

bash "$REPO/scripts/bootstrap.sh"

# The deployment tests' images take minutes to build on a fresh machine (a debootstrap each).
# For the whole suite they are built in the background from here, overlapping ruff, mypy and
# the tests before them (tests/deploy_images.py; the tests wait on its locks, then find them).
prebuild_pid=""
if (($# == 0)) && [[ "${AGENT_INFRA_NO_PREBUILD:-}" != 1 ]]; then
    mkdir -p "$REPO/.state"
    "$PY" -m tests.deploy_images daemon systemd >"$REPO/.state/prebuild.log" 2>&1 &
    prebuild_pid=$!
    export AGENT_INFRA_PREBUILD=started  # conftest.py starts no second one
fi

step "ruff check ."
ruff_rc=0
"$PY" -m ruff check . || ruff_rc=$?

# Two mypy runs: the package by its import name (found through the strict editable install,
# so errors are reported for agent_infra.*), then the scripts, tests and benchmarks by path
# (--explicit-package-bases names them tests.docker_support etc., as pytest imports them).
# Generated code (agent_infra.wire) is excluded in pyproject's [tool.mypy].
mypy_rc=0
step "mypy -p agent_infra"
"$PY" -m mypy -p agent_infra || mypy_rc=$?
mypy_dirs=()
for d in scripts tests bench; do
    if [[ -d "$d" ]] && [[ -n "$(find "$d" \( -name '*.py' -o -name '*.pyi' \) -print -quit)" ]]; then
        mypy_dirs+=("$d")
    fi
done
if ((${#mypy_dirs[@]})); then
    step "mypy ${mypy_dirs[*]}"
    "$PY" -m mypy --explicit-package-bases "${mypy_dirs[@]}" || mypy_rc=$?
fi

step "pytest $*"
pytest_rc=0
"$PY" -m pytest "$@" || pytest_rc=$?
if [[ -n "$prebuild_pid" ]]; then
    kill "$prebuild_pid" 2>/dev/null || true
    wait "$prebuild_pid" 2>/dev/null || true
fi
pytest_note=""
if ((pytest_rc == 5)); then
    printf 'test.sh: pytest collected no tests (exit 5): treating that as a failure\n' >&2
    pytest_note=" (no tests collected)"
    pytest_rc=1
fi

verdict() { if (($1 == 0)); then echo ok; else echo "FAILED($1)"; fi; }
rc=$pytest_rc
if ((rc == 0 && (ruff_rc != 0 || mypy_rc != 0))); then
    rc=1
fi
printf '==> summary: ruff %s, mypy %s, pytest %s%s; %s in %ss\n' \
    "$(verdict "$ruff_rc")" "$(verdict "$mypy_rc")" "$(verdict "$pytest_rc")" "$pytest_note" \
    "$(if ((rc == 0)); then echo PASS; else echo FAIL; fi)" "$((SECONDS - start))"
exit "$rc"
