# DockMon agent image.
#
#   docker build -t dockmon-agent .            # online: dependencies come from PyPI
#
# Offline (what tests/dockerenv.py:build_agent_image does): put the project wheel and every
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
# Non-root: uid/gid 1000 owns /data (a named volume inherits that on first use). The Docker
# socket is reached through the socket's group, given at run time by number:
#   docker run --group-add "$(stat -c %g /var/run/docker.sock)" ...
RUN set -eu; \
    if command -v useradd >/dev/null; then \
        groupadd --system --gid 1000 dockmon && \
        useradd --system --uid 1000 --gid 1000 --home-dir /data --shell /usr/sbin/nologin dockmon; \
    fi; \
    install -d -o 1000 -g 1000 -m 0700 /data
USER 1000:1000
VOLUME /data
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["dockmon-agent", "healthcheck"]
ENTRYPOINT ["dockmon-agent"]
