# ci-relay as a sidecar: non-root, outbox on a volume, health check on /health.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY migrations ./migrations
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/ci-relay --create-home relay
USER relay
WORKDIR /var/lib/ci-relay
VOLUME ["/var/lib/ci-relay"]

# In a pod or compose network the runners reach the relay on this port.
ENV CI_RELAY_SERVER__HOST=0.0.0.0 \
    CI_RELAY_OUTBOX__PATH=/var/lib/ci-relay/outbox.db
EXPOSE 8780
HEALTHCHECK --interval=15s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8780/health', timeout=2)"

# Exec form: SIGTERM reaches the daemon itself, which flushes and exits cleanly.
ENTRYPOINT ["ci-relay"]
CMD ["serve"]
