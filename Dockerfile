# credsync sidecar. Built offline from wheels made on the host:
#   bash scripts/build-image            (wheels → ./wheelhouse, then docker build)
# BASE_IMAGE needs python3 (3.11+) with venv; the default is the official slim image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY wheelhouse/ /wheels/
RUN python3 -m venv /opt/credsync \
 && /opt/credsync/bin/pip install --no-index --find-links /wheels --no-compile credsync \
 && /opt/credsync/bin/python -m compileall -q /opt/credsync/lib

FROM ${BASE_IMAGE}
COPY --from=build /opt/credsync /opt/credsync
ENV PATH=/opt/credsync/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CREDSYNC_SOURCE=/uploads \
    CREDSYNC_CLAUDE_DIR=/claude-config \
    CREDSYNC_STATE_DIR=/var/lib/credsync
# Root, but meant to run with every capability dropped except CHOWN (files owned by 1001) and
# DAC_OVERRIDE (read the operator's 0700 upload folder, write into the volumes), on a
# read-only root file system: see docker-compose.dokploy.yml and docs/security.md.
USER 0:0
# Every 60 s: one check costs about 0.25 s of CPU (Python start-up and imports).
HEALTHCHECK --interval=60s --timeout=10s --start-period=20s --retries=3 CMD ["credsync", "health"]
ENTRYPOINT ["credsync"]
CMD ["watch"]
