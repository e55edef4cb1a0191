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
source bench/lib.sh
bench_build lanmesh-bench-first-ping
bench_exec "$@"
