# ci-relay: numeric non-root user, outbox on a volume, health check on the configured port.
#
#   docker build -t ci-relay .
#   podman build --format docker -t ci-relay .     # podman's default OCI format drops HEALTHCHECK
#   deploy/build-image.sh                          # no registry: a Debian base, wheels, podman
#
# BASE_IMAGE is any image with python3 (3.11 or later) and its venv module at the same path
# in both stages. Without network inside the build, put wheels for every release of
# deploy/constraints.txt and the relay's own in deploy/wheels/ (pip wheel --constraint
# deploy/constraints.txt --wheel-dir deploy/wheels .); the build then installs from them only.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets in only the sources, the constraints and any local wheels.
COPY . .
# Exactly the releases of deploy/constraints.txt, in a venv the final stage copies whole.
# With deploy/wheels/ (which then holds the relay's own wheel too), nothing is downloaded.
RUN set -eu; \
    if [ -d deploy/wheels ]; then set -- --no-index --find-links deploy/wheels ci-relay; \
    else set -- .; fi; \
    python3 -m venv /opt/ci-relay; \
    /opt/ci-relay/bin/pip install --constraint deploy/constraints.txt "$@"; \
    /opt/ci-relay/bin/ci-relay --version; \
    /opt/ci-relay/bin/pip uninstall -q -y pip setuptools

FROM ${BASE_IMAGE}
COPY --from=build /opt/ci-relay /opt/ci-relay
# A numeric user, so that Kubernetes' runAsNonRoot can verify it without a passwd entry.
RUN mkdir -p /var/lib/ci-relay && chown 10001:10001 /var/lib/ci-relay \
    && chmod 0700 /var/lib/ci-relay
USER 10001:10001
WORKDIR /var/lib/ci-relay
VOLUME ["/var/lib/ci-relay"]
ENV PATH=/opt/ci-relay/bin:$PATH \
    HOME=/var/lib/ci-relay \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CI_RELAY_SERVER__HOST=0.0.0.0 \
    CI_RELAY_OUTBOX__PATH=/var/lib/ci-relay/outbox.db
EXPOSE 8780
# Reads the same settings as serve (file and environment), so it follows a changed port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s CMD ["ci-relay", "health"]

# Exec form: SIGTERM reaches the daemon itself, which drains, flushes and exits within
# flusher.shutdown_grace_s (8 s, inside the 10 s stop timeout).
ENTRYPOINT ["ci-relay"]
CMD ["serve"]
