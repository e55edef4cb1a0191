#!/usr/bin/env bash
# Benchmark (not a test): time from the second node's `node up` to its first ping reply
# from the first node, through two port-restricted cone NATs, in a network-namespace lab.
# Each run builds a fresh lab; prints every run, then the median and the maximum.
#
#   bench/first-ping.sh                 10 runs
#   bench/first-ping.sh --runs 20       more runs  (--timeout SECS: give up on a run)
#
# Builds as the invoking user, measures as root (re-run through sudo when needed): the lab
# needs network namespaces. Namespaces are removed after each run, also on failure.
# Useful variables: LANMESH_BIN_DIR (use these coordinator/node binaries instead of
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
BENCH="$TARGET/release/lanmesh-bench-first-ping"

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "first-ping.sh: needs root (network namespaces) and there is no sudo" >&2
        exit 1
    fi
    if ! bash scripts/deps.sh --check; then sudo bash scripts/deps.sh; fi
    env_args=("LANMESH_BIN_DIR=$LANMESH_BIN_DIR" "PATH=$PATH")
    for v in LANMESH_KEEP_LAB RUST_LOG; do
        if [ -n "${!v:-}" ]; then env_args+=("$v=${!v}"); fi
    done
    exec sudo env "${env_args[@]}" "$BENCH" "$@"
fi
bash scripts/deps.sh
exec "$BENCH" "$@"
