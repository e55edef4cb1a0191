#!/usr/bin/env bash
# Benchmark (not a test): lanmesh's data path against boringtun-cli 0.7.1 (`--threads 1` and
# its default) and wireguard-go, on this machine in one run: iperf3 TCP with 1 and 4 streams,
# UDP goodput at 1300-byte datagrams with loss, ping avg/mdev, both daemons' CPU; lanmesh also
# with --offload=false and relayed; then an idle node's RSS, CPU and wakeups. Prints one table
# of medians and the ratios to boringtun-cli `--threads 1`. See tests/src/bin/bench_throughput.rs.
#
#   bench/throughput.sh                          3 rounds of 10 s per measurement
#   bench/throughput.sh --seconds 5 --rounds 1   quicker
#   bench/throughput.sh --only lanmesh,bt1       some of: lanmesh lanmesh-nooff bt1 bt wggo
#                                                lanmesh-relay
#
# Installs what it compares against: wireguard-go, wireguard-tools and iperf3 with apt-get;
# boringtun-cli with `cargo install` into target/bench-tools (once). Builds as the invoking
# user, measures as root in network namespaces it creates and deletes.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BT_ROOT="$TARGET/bench-tools"
if [ ! -x "$BT_ROOT/bin/boringtun-cli" ]; then
    echo "throughput.sh: installing boringtun-cli 0.7.1 into $BT_ROOT (once)" >&2
    cargo install --quiet boringtun-cli --version 0.7.1 --root "$BT_ROOT"
fi
export LANMESH_BORINGTUN="$BT_ROOT/bin/boringtun-cli"

install_peers() {
    local missing=()
    command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
    command -v wg >/dev/null 2>&1 || missing+=(wireguard-tools)
    command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "throughput.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 \
                 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
}
BENCH_ROOT_SETUP=install_peers
bench_build lanmesh-bench-throughput
bench_exec "$@"
