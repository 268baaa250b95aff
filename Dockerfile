# credsync sidecar, built from this repository:
#   docker build -t credsync .                      (online: dependencies from the package index)
# Offline, where no index is reachable, serve a wheelhouse made for the image's own Python and
# platform over HTTP and point the build at it (scripts/build-image does exactly this):
#   docker build --network host --build-arg WHEELS_URL=http://127.0.0.1:8765/ \
#                --build-arg BASE_IMAGE=credsync-base:bookworm -t credsync .
# BASE_IMAGE needs python3 (3.11+) with venv; the default is the official slim image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Empty: install from the index. Set: only from the wheels listed at this URL (no index at all).
ARG WHEELS_URL=
COPY pyproject.toml README.md LICENSE /src/
COPY credsync /src/credsync
RUN python3 -m venv /opt/credsync \
 && /opt/credsync/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
      ${WHEELS_URL:+--no-index --find-links "$WHEELS_URL"} /src \
 && /opt/credsync/bin/python -m compileall -q /opt/credsync/lib \
 && ln -s "$(/opt/credsync/bin/python -c 'import credsync.health_probe as m; print(m.__file__)')" \
      /opt/credsync/health_probe.py

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="credsync" \
      org.opencontainers.image.description="Publishes credentials uploaded by scp into a container volume, atomically, owned and private." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /opt/credsync /opt/credsync
ENV PATH=/opt/credsync/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CREDSYNC_SOURCE=/uploads \
    CREDSYNC_CLAUDE_DIR=/claude-config \
    CREDSYNC_STATE_DIR=/var/lib/credsync
# Least privilege: root, but run with every capability dropped except CHOWN (files owned by
# 1001) and DAC_OVERRIDE (read the operator's 0700 upload folder, write into the volumes), on a
# read-only root file system, with no Docker socket: see docker-compose.dokploy.yml and
# docs/security.md. The opt-in notification layer adds the socket.
USER 0:0
# A bare interpreter (-I -S: no site, nothing imported beyond start-up) reading the health file: about
# 15 ms of CPU per check, so every 30 s costs under 0.1 % of a core. `credsync health` says the
# same for an operator, at the cost of the whole CLI's imports.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/opt/credsync/bin/python", "-I", "-S", "/opt/credsync/health_probe.py"]
ENTRYPOINT ["credsync"]
CMD ["watch"]
