# The agent-infra daemons (env-manager, orchestrator) in one image: agent-infra:local.
#
# Build it with scripts/build_image.sh, which first makes the base image with debootstrap
# (no registry is reachable) and the wheels on the host (pip cannot reach PyPI inside a build):
#   FROM local/debian-python:bookworm   minimal Debian 12 with python3 + python3-venv
#   wheelhouse/deps/                    every dependency (scripts/wheelhouse.py) and
#                                       requirements.txt, the runtime ones
#   wheelhouse/project/                 this project's wheel
# The dependencies go in first, in their own layer: a change of our code alone reuses it.
# Run it with docker-compose.yml (`docker-compose up -d --wait`), configured by deploy/compose/.

FROM local/debian-python:bookworm AS install
# scripts/build_image.sh tags this stage (the cache of the dependency layer) and removes the
# copies of it that a newer build replaced.
LABEL org.agent-infra.stage=install
COPY wheelhouse/deps/ /wheelhouse/deps/
RUN python3 -m venv /opt/agent-infra/.venv \
    && /opt/agent-infra/.venv/bin/pip install --no-index --find-links /wheelhouse/deps \
        --no-cache-dir --disable-pip-version-check -r /wheelhouse/deps/requirements.txt
COPY wheelhouse/project/ /wheelhouse/project/
RUN /opt/agent-infra/.venv/bin/pip install --no-index --no-deps --no-cache-dir \
        --disable-pip-version-check /wheelhouse/project/*.whl \
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
