#!/usr/bin/env bash
# Builds the ci-relay image with podman where no container registry is reachable: a Debian
# bookworm base made with debootstrap from the mirror apt already uses, wheels built on the
# host (so the build needs no network), and the image built on that base in the docker format
# (podman's default OCI format drops the HEALTHCHECK). Keeps the image, and the base for the
# next build; removes the wheels. Prints the image's name and size. Run as root.
#
#   deploy/build-image.sh                             # localhost/ci-relay:latest
#   deploy/build-image.sh localhost/ci-relay:0.1.0    # or IMAGE=localhost/ci-relay:0.1.0
#   deploy/build-image.sh --remove-base               # remove the base again if this run made it
#
# BASE_IMAGE names the base (default localhost/ci-relay-base:bookworm); it is made if absent.
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."

IMAGE=${IMAGE:-localhost/ci-relay:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/ci-relay-base:bookworm}
# The outbox's volume, as docs/deploy.md runs the image.
STATE_VOLUME=ci-relay-state
keep_base=1

usage() { sed -n '2,12s/^# \{0,1\}//p' "$SELF"; }

while [ $# -gt 0 ]; do
    case $1 in
        --keep-base) keep_base=1 ;;
        --remove-base) keep_base=0 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) IMAGE=$1 ;;
    esac
    shift
done

WORK=$(mktemp -d)
made_base=0

log() { printf '[build-image] %s\n' "$*"; }
fail() { log "FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

cleanup() {
    if [ "$made_base" = 1 ] && [ "$keep_base" = 0 ]; then
        podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK" deploy/wheels
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "run as root: debootstrap needs it, and the image goes to root's podman storage"

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

# configure_podman: the containers.conf of this run (deploy/podman-conf.sh).
. deploy/podman-conf.sh

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
    if podman image exists "$BASE_IMAGE"; then
        log "base $BASE_IMAGE already present"
        return
    fi
    local started mirror rootfs="$WORK/rootfs"
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || fail "no Debian mirror in apt's sources"
    log "making the base $BASE_IMAGE with debootstrap (about 45 MB from apt's mirror)"
    started=$(now)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
    made_base=1
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "base $BASE_IMAGE made in $(since "$started") s"
}

# Wheels for exactly deploy/constraints.txt and the relay, built on the host, so that the
# build needs no network: the host's Python must be the base's.
make_wheels() {
    local python host base started
    if [ -x .venv/bin/python ]; then
        python=.venv/bin/python
    else
        python3 -m venv "$WORK/venv" && python="$WORK/venv/bin/python"
    fi
    host=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    base=$(podman run --rm "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$host" = "$base" ] || fail "wheels built with Python $host cannot go into a base with $base"
    started=$(now)
    rm -rf deploy/wheels
    "$python" -m pip wheel -q --constraint deploy/constraints.txt --wheel-dir deploy/wheels . \
        >"$WORK/wheels.log" 2>&1 || { tail -20 "$WORK/wheels.log" >&2; fail "pip wheel"; }
    log "wheels made in $(since "$started") s ($(find deploy/wheels -name '*.whl' | wc -l) files)"
}

build() {
    local started old new context_kb
    # What .dockerignore lets in.
    context_kb=$(du -skc pyproject.toml README.md relay migrations deploy/constraints.txt \
        deploy/wheels | tail -1 | cut -f1)
    old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    started=$(now)
    # --format docker: the OCI format has no field for HEALTHCHECK, which podman then drops.
    # --layers=false: no cached stage images are left behind; only $IMAGE is made.
    podman build -q --layers=false --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "podman build"; }
    log "image $IMAGE built in $(since "$started") s (build context $context_kb KiB)"
    new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
    # The image this one replaces, unless a container still uses it.
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
    case $(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE") in
        *"ci-relay health"*) ;;
        *) fail "the image $IMAGE has no HEALTHCHECK" ;;
    esac
}

install_tools
configure_podman
make_base
make_wheels
build

size_mb=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
if [ "$keep_base" = 1 ]; then
    log "base $BASE_IMAGE kept for the next build (--remove-base removes the one a run makes)"
elif [ "$made_base" = 1 ]; then
    podman rmi "$BASE_IMAGE" >/dev/null && made_base=0
    log "base $BASE_IMAGE removed"
fi
log "run it: podman run -d --name ci-relay -p 127.0.0.1:8780:8780" \
    "-v $STATE_VOLUME:/var/lib/ci-relay --read-only --cap-drop all" \
    "--security-opt no-new-privileges -e DD_API_KEY $IMAGE"
printf '%s %s MB\n' "$IMAGE" "$size_mb"
