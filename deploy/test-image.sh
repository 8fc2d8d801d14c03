#!/usr/bin/env bash
# Builds the image with podman on a local Debian base and exercises it: /health and /ready,
# the README's event answered 202, the event still pending after a restart, a clean exit on
# SIGTERM inside the stop timeout, the health check. Prints the figures; removes every
# container, volume and image it made, by name. Run as root (CI runs it from .ci/run).
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
made_base=0

log() { printf '[test-image] %s\n' "$*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

cleanup() {
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    if [ "$made_base" = 1 ] && [ "${KEEP_BASE:-0}" != 1 ]; then
        podman rmi -f "$BASE" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK" deploy/wheels
}
trap cleanup EXIT

install_tools() {
    if command -v podman >/dev/null && command -v debootstrap >/dev/null \
        && command -v runc >/dev/null; then
        return
    fi
    log "installing podman and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc netavark aardvark-dns iptables catatonit debootstrap >/dev/null
}

# Root may not raise its open-file limit here, and crun cannot run with hybrid cgroups:
# a containers.conf of this run's own (not the machine's) says so.
configure_podman() {
    local hard
    hard=$(ulimit -Hn)
    cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${hard}:${hard}", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
    export CONTAINERS_CONF="$WORK/containers.conf"
}

# The mirror apt already uses: no registry is needed, and none is named here.
debian_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources
    if [ -f "$sources" ]; then
        awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$sources"
    else
        awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list
    fi
}

make_base() {
    if podman image exists "$BASE"; then
        log "base $BASE already present"
        return
    fi
    local started rootfs="$WORK/rootfs"
    started=$(now)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; return 1; }
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    made_base=1
    log "base $BASE made in $(since "$started") s"
}

# Wheels for exactly deploy/constraints.txt and the relay, built on the host, so that the
# build needs no network: the host's Python must be the base's.
make_wheels() {
    local python host base
    if [ -x .venv/bin/python ]; then
        python=.venv/bin/python
    else
        python3 -m venv "$WORK/venv" && python="$WORK/venv/bin/python"
    fi
    host=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    base=$(podman run --rm "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$host" = "$base" ] || fail "wheels built with Python $host cannot go into a base with $base"
    rm -rf deploy/wheels
    "$python" -m pip wheel -q --constraint deploy/constraints.txt --wheel-dir deploy/wheels . \
        >"$WORK/wheels.log" 2>&1 || { tail -20 "$WORK/wheels.log"; return 1; }
}

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

install_tools
command -v curl >/dev/null || { apt-get install -y -qq --no-install-recommends curl >/dev/null; }
configure_podman
# Leftovers of an interrupted run, by name.
podman rm -f "$NAME" >/dev/null 2>&1 || true
podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
make_base
make_wheels

started=$(now)
# --layers=false: no cached stage images are left behind; only $IMAGE is made.
podman build -q --layers=false --format docker --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "build"; }
build_s=$(since "$started")
# What .dockerignore lets in, against the whole working tree.
context_kb=$(du -skc pyproject.toml README.md relay migrations deploy/constraints.txt deploy/wheels \
    | tail -1 | cut -f1)
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
podman healthcheck run "$NAME" >/dev/null || fail "the image's health check"

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

log "figures"
printf '  %-40s %s\n' \
    "build context" "${context_kb} KiB (the working tree: ${tree_kb} KiB)" \
    "base image" "${base_mb} MB ($BASE)" \
    "image" "${size_mb} MB, user $user" \
    "build (wheels ready, base present)" "${build_s} s" \
    "start to /ready" "${ready_s} s" \
    "restart to /ready, the event pending" "${restart_ready_s} s, pending_events=$pending" \
    "SIGTERM to exit (podman stop -t $STOP_TIMEOUT_S)" "${stop_s} s, exit status $exit_code"
log "passed"
