# The agent-infra daemons (env-manager, orchestrator) in one image: agent-infra:local.
#
# Build it with scripts/build_image.sh, which first makes the base image with debootstrap
# (no registry is reachable) and the wheels on the host (pip cannot reach PyPI inside a build):
#   FROM local/debian-python:bookworm   minimal Debian 12 with python3 + python3-venv
#   wheelhouse/                         `pip wheel . -w wheelhouse/`: this project + dependencies
# Run it with docker-compose.yml (`docker-compose up -d --wait`).

FROM local/debian-python:bookworm AS install
# scripts/build_image.sh removes this stage's leftover image after the build.
LABEL org.agent-infra.stage=install
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/agent-infra/.venv \
    && /opt/agent-infra/.venv/bin/pip install --no-index --find-links /wheelhouse \
        --no-cache-dir --disable-pip-version-check agent-infra \
    && /opt/agent-infra/.venv/bin/pip check --disable-pip-version-check

FROM local/debian-python:bookworm
# The orchestrator runs as this user; env-manager runs as root (compose `user: root`) because it
# needs /var/run/docker.sock.
RUN groupadd --gid 10001 agent-infra \
    && useradd --uid 10001 --gid agent-infra --no-create-home --no-log-init \
        --home-dir /var/lib/agent-infra --shell /usr/sbin/nologin agent-infra \
    && install -d -o agent-infra -g agent-infra -m 0750 /var/lib/agent-infra/orchestrator \
    && install -d -m 0700 /var/lib/agent-infra/env-manager
COPY --from=install /opt/agent-infra/.venv /opt/agent-infra/.venv
ENV PATH=/opt/agent-infra/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORCHESTRATOR_DATA_DIR=/var/lib/agent-infra/orchestrator \
    ENV_MANAGER_STATE_DIR=/var/lib/agent-infra/env-manager
USER agent-infra
WORKDIR /var/lib/agent-infra
# Both daemons stop on SIGTERM: drain within server.shutdown_grace (10 s by default), then exit 0.
STOPSIGNAL SIGTERM
CMD ["orchestrator"]
