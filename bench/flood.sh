#!/usr/bin/env bash
# Benchmark (not a test): the coordinator under Hello floods, in one network-namespace lab.
# Cases: no flood; junk Hellos (valid header, random rest) from random sources of the
# attacker's /25 and from one source; a recorded valid Hello replayed from the attacker's
# address and from random sources. Each flood: 200,000 datagrams/s for 10 s; one second in,
# a fresh node joins. Per case: the flood rate achieved, when the node registered and when
# a peer's first ping through the mesh came back, the coordinator's CPU and memory (before,
# at the end of and after the flood), and what reached the coordinator. Every case runs 3
# times; the medians are printed with whether the goals hold (join within 1 s, first ping
# within 2 s, flat memory).
#
#   bench/flood.sh                          all cases, 3 runs each
#   bench/flood.sh --runs 5                 more runs
#   bench/flood.sh --cases baseline,replay-random --coordinator-debug
#                                           some cases; coordinator at debug, its drop
#                                           reasons and lines about the node printed per case
#   bench/flood.sh --pps 100000 --seconds 12   (--timeout SECS: give up on the node)
#
# Builds as the invoking user, measures as root (re-run through sudo when needed): the lab
# needs network namespaces. The lab's namespaces and processes are removed at the end, also
# on failure or Ctrl-C; the floods never leave the lab's namespaces.
# Useful variables: LANMESH_BIN_DIR (use these coordinator/node binaries instead of
# building), LANMESH_KEEP_LAB=1 (keep the lab's logs in /tmp), RUST_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

# Build as the invoking user: everything, or only the bench tools when LANMESH_BIN_DIR is given.
if [ -z "${LANMESH_BIN_DIR:-}" ]; then
    cargo build --release --bins
else
    cargo build --release -p lanmesh-e2e --bins
fi
export LANMESH_BIN_DIR="${LANMESH_BIN_DIR:-$TARGET/release}"
BENCH="$TARGET/release/lanmesh-bench-flood"
# The flooder (it is not in LANMESH_BIN_DIR necessarily).
export LANMESH_ATTACK="${LANMESH_ATTACK:-$TARGET/release/lanmesh-attack}"

install_tcpdump() {
    if command -v tcpdump >/dev/null 2>&1; then return 0; fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "flood.sh: installing tcpdump (to record a real Hello)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends tcpdump >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 \
                 && apt-get install -y -q --no-install-recommends tcpdump >/dev/null 2>&1; } \
            || { echo "flood.sh: could not install tcpdump" >&2; return 1; }
    else
        echo "flood.sh: needs tcpdump (to record a real Hello); please install it" >&2
        return 1
    fi
}

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "flood.sh: needs root (network namespaces) and there is no sudo" >&2
        exit 1
    fi
    if ! bash scripts/deps.sh --check; then sudo bash scripts/deps.sh; fi
    env_args=("LANMESH_BIN_DIR=$LANMESH_BIN_DIR" "LANMESH_ATTACK=$LANMESH_ATTACK" "PATH=$PATH")
    for v in LANMESH_KEEP_LAB RUST_LOG; do
        if [ -n "${!v:-}" ]; then env_args+=("$v=${!v}"); fi
    done
    exec sudo env "${env_args[@]}" bash -c "$(declare -f install_tcpdump); install_tcpdump; exec \"\$0\" \"\$@\"" "$BENCH" "$@"
fi
bash scripts/deps.sh
install_tcpdump
exec "$BENCH" "$@"
