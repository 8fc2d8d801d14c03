#!/usr/bin/env bash
# Builds the image with deploy/build-image.sh under a name of its own and exercises it:
# /health and /ready, the image's health check (podman healthcheck run), the README's event
# answered 202, the event still pending after a restart, a clean exit on SIGTERM inside the
# stop timeout. Prints the figures; removes every container, volume and image it made, by
# name. Run as root (CI runs it from .ci/run).
#
#   deploy/test-image.sh              # KEEP_BASE=1 keeps the Debian base image for a rerun
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=ci-relay-image-test
IMAGE=localhost/ci-relay:image-test
BASE=localhost/ci-relay-base:bookworm
VOLUME=ci-relay-image-test-state
STOP_TIMEOUT_S=10
WORK=$(mktemp -d)
had_base=1

log() { printf '[test-image] %s\n' "$*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

cleanup() {
    local removed="container $NAME, volume $VOLUME, image $IMAGE"
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    if [ "$had_base" = 0 ] && [ "${KEEP_BASE:-0}" != 1 ]; then
        podman rmi -f "$BASE" >/dev/null 2>&1 || true
        removed="$removed, base $BASE (KEEP_BASE=1 keeps it)"
    fi
    rm -rf "$WORK"
    log "removed $removed"
}
trap cleanup EXIT

# configure_podman: the containers.conf of this run (deploy/podman-conf.sh).
. deploy/podman-conf.sh

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() {
    local port=$1
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    log "not ready after 15 s"
    podman logs "$NAME" | tail -20
    return 1
}

start_container() {
    # As the Kubernetes manifests run it: read-only root (no tmpfs either), no capability, no
    # privilege escalation. No health timer (it needs systemd): the check is run by hand below.
    podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8780" -v "$VOLUME:/var/lib/ci-relay" \
        --read-only --read-only-tmpfs=false --cap-drop=all --security-opt=no-new-privileges \
        --health-interval disable -e CI_RELAY_LOG__FORMAT=json "$IMAGE" >/dev/null 2>>"$WORK/podman.log"
}

# The pending_events of the last "listening" line of the container's log.
pending_at_start() {
    podman logs "$NAME" 2>&1 | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.startswith("{")]
print([l for l in lines if l.get("event") == "listening"][-1]["pending_events"])'
}

readme_event() {
    cat <<EOF
{"data": {"attributes": {"resource": {"level": "pipeline", "unique_id": "3eacb6f3-ff04-4e10-8a9c-46e6d054024a",
 "name": "Deploy to AWS", "url": "https://my-ci-provider.example/pipelines/my-pipeline/run/1",
 "start": "$(date -u -d '-2 min' +%FT%TZ)", "end": "$(date -u +%FT%TZ)",
 "status": "success", "partial_retry": false}}, "type": "cipipeline_resource_request"}}
EOF
}

fail() {
    log "FAILED: $*"
    podman logs "$NAME" 2>&1 | tail -20 || true
    exit 1
}

if ! command -v curl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
fi
configure_podman
# Leftovers of an interrupted run, by name.
podman rm -f "$NAME" >/dev/null 2>&1 || true
podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
podman image exists "$BASE" 2>/dev/null || had_base=0

# The build itself is deploy/build-image.sh's, as anyone would run it; only the names differ.
started=$(now)
BASE_IMAGE=$BASE bash deploy/build-image.sh "$IMAGE" | tee "$WORK/build-image.log" \
    || fail "deploy/build-image.sh"
total_s=$(since "$started")
# Its own figures, from its log.
figure() { sed -n "s|^\[build-image\] $1.*|\1|p" "$WORK/build-image.log" | tail -1; }
wheels_s=$(figure 'wheels made in \([0-9.]*\) s')
build_s=$(figure 'image .* built in \([0-9.]*\) s')
context_kb=$(figure 'image .* (build context \([0-9]*\) KiB)')
base_s=$(figure 'base .* made in \([0-9.]*\) s')
if [ -z "$build_s" ] || [ -z "$wheels_s" ] || [ -z "$context_kb" ]; then
    fail "deploy/build-image.sh printed no build figures"
fi
tree_kb=$(du -sk --exclude=.git . | cut -f1)
size_mb=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
base_mb=$(podman image inspect --format '{{.Size}}' "$BASE" | awk '{printf "%.0f", $1 / 1e6}')
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = "10001:10001" ] || fail "image user is '$user', not 10001:10001"

PORT=$(free_port)
started=$(now)
start_container
wait_ready "$PORT" || fail "first start"
ready_s=$(since "$started")
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || fail "/health"
# The image's HEALTHCHECK (kept by build-image.sh's docker format), run once by hand.
podman healthcheck run "$NAME" >/dev/null 2>>"$WORK/podman.log" || fail "the image's health check"
health=$(podman inspect --format '{{.State.Health.Status}}' "$NAME")
[ "$health" = healthy ] || fail "health check status '$health', not healthy"

status=$(readme_event | curl -sS -o /dev/null -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' --data-binary @- \
    "http://127.0.0.1:$PORT/api/v2/ci/pipeline")
[ "$status" = 202 ] || fail "the README's event got $status, not 202"

podman restart -t "$STOP_TIMEOUT_S" "$NAME" >/dev/null 2>>"$WORK/podman.log"
started=$(now)
wait_ready "$PORT" || fail "restart"
restart_ready_s=$(since "$started")
pending=$(pending_at_start)
[ "$pending" = 1 ] || fail "after the restart $pending events pending, not 1"

started=$(now)
podman stop -t "$STOP_TIMEOUT_S" "$NAME" >/dev/null 2>>"$WORK/podman.log"
stop_s=$(since "$started")
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$exit_code" = 0 ] || fail "exit status $exit_code after SIGTERM (137 is SIGKILL at the timeout)"
python3 -c "import sys; sys.exit(float(sys.argv[1]) >= float(sys.argv[2]))" "$stop_s" "$STOP_TIMEOUT_S" \
    || fail "stop took $stop_s s"

if [ -n "$base_s" ]; then base_made="$base_s s"; else base_made="no, already present"; fi
log "figures"
printf '  %-40s %s\n' \
    "build context" "${context_kb} KiB (the working tree: ${tree_kb} KiB)" \
    "base image" "${base_mb} MB ($BASE)" \
    "image" "${size_mb} MB, user $user" \
    "base made (debootstrap)" "$base_made" \
    "wheels (pip wheel on the host)" "${wheels_s} s" \
    "podman build (wheels and base ready)" "${build_s} s" \
    "deploy/build-image.sh in all" "${total_s} s" \
    "podman healthcheck run" "$health" \
    "start to /ready" "${ready_s} s" \
    "restart to /ready, the event pending" "${restart_ready_s} s, pending_events=$pending" \
    "SIGTERM to exit (podman stop -t $STOP_TIMEOUT_S)" "${stop_s} s, exit status $exit_code"
log "passed"
