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
source bench/lib.sh
bench_build lanmesh-bench-flood
bench_exec "$@"
