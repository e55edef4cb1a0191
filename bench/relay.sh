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
source bench/lib.sh

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
BENCH_ROOT_SETUP=install_iperf3
bench_build lanmesh-bench-relay
bench_exec "$@"
