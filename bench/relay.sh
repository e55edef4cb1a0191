#!/usr/bin/env bash
# Benchmark (not a test): what a relay costs, in network-namespace labs.
#  1. Single-stream TCP throughput from node a to node b over the mesh, ~10 s each: direct
#     (both behind port-restricted cone NATs, no relay) and relayed (both behind symmetric
#     NATs, one relay), 3 rounds each in fresh labs, medians compared. Target: relayed >= 50%
#     of direct. Uses iperf3 (installed with apt-get when missing and running as root), else
#     lanmesh-testkit.
#  2. Time from the second node's `node up` to its first ping reply through the relay,
#     10 runs, each in a fresh lab: median and maximum. Target: < 2 s.
#
#   bench/relay.sh                       everything
#   bench/relay.sh --seconds 20          longer throughput runs (--repeat N rounds, default 3)
#   bench/relay.sh --runs 20             more first-ping runs (--timeout SECS: give up on one)
#   bench/relay.sh --skip-ping | --skip-throughput
#
# Builds as the invoking user, measures as root (re-run through sudo when needed): the labs
# need network namespaces. Namespaces are removed after each lab, also on failure.
# Useful variables: LANMESH_BIN_DIR (use these coordinator/node/relay binaries instead of
# building), LANMESH_KEEP_LAB=1 (keep each lab's logs in /tmp), RUST_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

# Build as the invoking user: everything, or only the bench when LANMESH_BIN_DIR is given.
if [ -z "${LANMESH_BIN_DIR:-}" ]; then
    cargo build --release --bins
else
    cargo build --release -p lanmesh-e2e --bins
fi
export LANMESH_BIN_DIR="${LANMESH_BIN_DIR:-$TARGET/release}"
BENCH="$TARGET/release/lanmesh-bench-relay"
# The bench finds lanmesh-testkit through this (it is not in LANMESH_BIN_DIR necessarily).
export LANMESH_TESTKIT="${LANMESH_TESTKIT:-$TARGET/release/lanmesh-testkit}"

install_iperf3() {
    if command -v iperf3 >/dev/null 2>&1; then return 0; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "relay.sh: installing iperf3" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends iperf3 >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 \
                 && apt-get install -y -q --no-install-recommends iperf3 >/dev/null 2>&1; } \
            || echo "relay.sh: could not install iperf3; measuring with lanmesh-testkit" >&2
    else
        echo "relay.sh: no iperf3 (and no apt-get); measuring with lanmesh-testkit" >&2
    fi
}

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "relay.sh: needs root (network namespaces) and there is no sudo" >&2
        exit 1
    fi
    if ! bash scripts/deps.sh --check; then sudo bash scripts/deps.sh; fi
    env_args=("LANMESH_BIN_DIR=$LANMESH_BIN_DIR" "LANMESH_TESTKIT=$LANMESH_TESTKIT" "PATH=$PATH")
    for v in LANMESH_KEEP_LAB RUST_LOG; do
        if [ -n "${!v:-}" ]; then env_args+=("$v=${!v}"); fi
    done
    # iperf3 needs root to install; the bench then runs as root too.
    exec sudo env "${env_args[@]}" bash -c "$(declare -f install_iperf3); install_iperf3; exec \"\$0\" \"\$@\"" "$BENCH" "$@"
fi
bash scripts/deps.sh
install_iperf3
exec "$BENCH" "$@"
