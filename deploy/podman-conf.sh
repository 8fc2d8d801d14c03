# shellcheck shell=bash
# Sourced by deploy/build-image.sh and deploy/test-image.sh (after `cd` to the repository).
# Root may not raise its open-file limit on some hosts, and crun cannot run with hybrid
# cgroups: a containers.conf of this run's own (not the machine's), in $WORK, says so. A
# caller's CONTAINERS_CONF is used as it is.
configure_podman() {
    local hard
    if [ -n "${CONTAINERS_CONF:-}" ] && [ -f "$CONTAINERS_CONF" ]; then
        return
    fi
    hard=$(ulimit -Hn)
    cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${hard}:${hard}", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$WORK/containers.conf"
}
