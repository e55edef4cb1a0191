#!/usr/bin/env bash
# Benchmark (not a test): LAN-game discovery over the mesh, in network-namespace labs.
#  1. For N = 2 and 8 game servers (each on its own node, all nodes on one switch: direct
#     paths): the time from a LAN browser's first broadcast query (255.255.255.255) to the
#     last server's unicast answer, with idle tunnels (the query builds them) and then with
#     tunnels up (median and max of 5 runs).
#  2. The CPU cost of fan-out: the browser's node sends 1,000 broadcasts a second to its N
#     peers for 10 s: the node daemon's CPU (% of a core, µs per broadcast and per copy),
#     and the same for 1,000 unicast packets a second to one peer, for scale.
#  3. Names: from a new node's `node up` to its name resolving on another node (/etc/hosts).
#
#   bench/lan.sh                         everything
#   bench/lan.sh --servers 2,8,16        other server counts
#   bench/lan.sh --runs 10 --pps 1000 --seconds 10
#
# Builds as the invoking user, measures as root (re-run through sudo when needed): the labs
# need network namespaces, which are removed after each lab, also on failure.
# Useful variables: LANMESH_BIN_DIR (use these coordinator/node binaries instead of
# building), LANMESH_KEEP_LAB=1 (keep each lab's logs in /tmp), RUST_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_build lanmesh-bench-lan
bench_exec "$@"
