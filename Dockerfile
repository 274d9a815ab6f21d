# DockMon agent image.
#
#   docker build -t dockmon-agent .            # online: dependencies come from PyPI
#
# Offline (what tests/support/images.py:build_agent_image does): put the project wheel and every
# dependency wheel in ./wheels of the build context, then
#
#   docker build --network none \
#     --build-arg BASE_IMAGE=<local python3 image> \
#     --build-arg PIP_INSTALL_ARGS="--no-index --find-links=/tmp/wheels" .
#
# When ./wheels holds a dockmon_agent-*.whl it is installed as is; otherwise the source tree is.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE} AS build
ARG PIP_INSTALL_ARGS=""
COPY . /tmp/src
# PIP_INSTALL_ARGS is deliberately unquoted: it is a list of words.
RUN set -eu; \
    if [ -d /tmp/src/wheels ]; then mv /tmp/src/wheels /tmp/wheels; fi; \
    target=/tmp/src; \
    for whl in /tmp/wheels/dockmon_agent-*.whl; do \
        if [ -e "$whl" ]; then target="$whl"; fi; \
    done; \
    python3 -m venv /opt/dockmon-agent; \
    /opt/dockmon-agent/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        $PIP_INSTALL_ARGS "$target"; \
    test -x /opt/dockmon-agent/bin/dockmon-agent; \
    /opt/dockmon-agent/bin/docker-compose version

FROM ${BASE_IMAGE}
# Where the source lives; CI or a release build passes the real repository URL.
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="dockmon-agent" \
      org.opencontainers.image.description="Agent that connects a Docker host to a DockMon server" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/dockmon-agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_PATH=/data
COPY --from=build /opt/dockmon-agent /opt/dockmon-agent
# Runs as uid 1000, reached by either way of starting it:
# * DockMon's own command (no --user): the container starts as root and the agent's first act
#   (actors/host/privileges.py, before it reads any configuration) is to read the Docker socket's
#   group, give /data (or $DATA_PATH) to uid 1000 without following symlinks, then drop root
#   in-process (setgroups/setgid/setuid: no capabilities left, no_new_privs) to RUN_AS with the
#   socket's group as a supplementary group. If it cannot drop root it refuses to start.
#     docker run -d -v /var/run/docker.sock:/var/run/docker.sock -v dockmon-agent-data:/data \
#       -e DOCKMON_URL=... -e REGISTRATION_TOKEN=... <image>
# * Non-root from the start: nothing to drop; give it the socket's group by number:
#     docker run --user 1000 --group-add "$(stat -c %g /var/run/docker.sock)" ...
# RUN_AS=root keeps root, knowingly (logged as a warning).
ENV RUN_AS=1000
RUN set -eu; \
    if command -v useradd >/dev/null; then \
        groupadd --system --gid 1000 dockmon && \
        useradd --system --uid 1000 --gid 1000 --home-dir /data --shell /usr/sbin/nologin dockmon; \
    fi; \
    install -d -o 1000 -g 1000 -m 0700 /data
VOLUME /data
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["dockmon-agent", "healthcheck"]
ENTRYPOINT ["dockmon-agent"]
