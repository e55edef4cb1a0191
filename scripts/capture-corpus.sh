#!/usr/bin/env bash
# Seeds the fuzz corpus (fuzz/corpus/<target>/) with real packets: runs a small lab in
# network namespaces (a coordinator, a relay and four nodes on one switch), captures every UDP
# datagram on the switch with tcpdump, and splits the payloads per fuzz target.
#
#   sudo scripts/capture-corpus.sh          replace fuzz/corpus/* with fresh seeds
#   sudo scripts/capture-corpus.sh --keep   add them to what is there
#   scripts/capture-corpus.sh --datagrams fuzz/target/capture-datagrams.txt
#                                           no lab: re-split the datagrams of an earlier run
#                                           (each run leaves them there)
#
# Re-run it after a wire format change: the seeds follow the formats of the binaries it
# builds. The lab uses the fuzz targets' fixed identities (fuzz/src/lib.rs: keys from fixed
# seeds, join keys, addresses), so captured Hellos, probes, binds and relay frames
# authenticate inside the targets. The scenario:
#   - the coordinator (203.0.113.10:3478, STUN also on :3480) holds a fixed reusable node key
#     and relay key; relay r1 (203.0.113.20:3479) joins with the relay key;
#   - nodes a, b, c (203.0.113.11-13:41641) join with the node key; a and b drop each other's
#     packets (nftables), so they talk through the relay; c is direct to both;
#   - node d (.14) joins without a key: key request, pinned key, Hello, rejection;
#   - pings over the mesh (small and large), `node ping` (probes, direct and relayed),
#     `node netcheck` (STUN), then the admin removes c, and everyone stops (goodbyes).
# Needs root (namespaces, TUN), tcpdump (installed with apt-get when missing), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/sbin:/sbin"

KEEP=0
DATAGRAMS=
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --datagrams) DATAGRAMS=$(realpath "$2"); shift ;;
        *) echo "usage: capture-corpus.sh [--keep] [--datagrams FILE]" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n==> %s\n' "$*"; }

split_seeds() {                              # split_seeds DATAGRAMS WORKDIR
    say "writing seeds"
    local out="$2/corpus"
    "$SEEDGEN" corpus "$1" "$out"
    for dir in "$out"/*/; do
        local target dest
        target=$(basename "$dir")
        dest="fuzz/corpus/$target"
        [ "$KEEP" -eq 1 ] || rm -rf "$dest"
        mkdir -p "$dest"
        cp "$dir"/* "$dest"/
    done
    if [ -n "${SUDO_UID:-}" ]; then
        chown -R "$SUDO_UID:$SUDO_GID" fuzz/corpus fuzz/target 2>/dev/null || true
    fi
    say "fuzz/corpus: $(find fuzz/corpus -type f | wc -l) files, $(du -sh fuzz/corpus | cut -f1)"
}

SEEDGEN="$ROOT/fuzz/target/release/lanmesh-fuzz-seedgen"
if [ -n "$DATAGRAMS" ]; then
    [ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
    cargo build --release --manifest-path fuzz/Cargo.toml -p lanmesh-fuzz-seedgen
    TMP=$(mktemp -d)
    split_seeds "$DATAGRAMS" "$TMP"
    rm -rf "$TMP"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "capture-corpus.sh needs root (network namespaces, TUN devices): run it with sudo" >&2
    exit 1
fi
bash scripts/deps.sh
if ! command -v tcpdump >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tcpdump
fi
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

# --- 1. Build -------------------------------------------------------------------------
say "building release binaries and the seed generator"
cargo build --release --bins -p lanmesh-coordinator -p lanmesh-node -p lanmesh-relay
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
cargo build --release --manifest-path fuzz/Cargo.toml -p lanmesh-fuzz-seedgen
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
eval "$("$SEEDGEN" keys)"

# --- 2. Lab -----------------------------------------------------------------------------
ID="lmcap-$$"
WORK=$(mktemp -d "/tmp/$ID.XXXXXX")
NAMESPACES=()
PIDS=()
TCPDUMP_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    [ ${#PIDS[@]} -gt 0 ] && kill -KILL "${PIDS[@]}" 2>/dev/null
    [ -n "$TCPDUMP_PID" ] && kill -KILL "$TCPDUMP_PID" 2>/dev/null
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if [ $status -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "----- last lines of $log" >&2
            tail -n 15 "$log" >&2
        done
        echo "capture failed (status $status); files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

add_ns() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}
PORT=0
add_host() {                                 # add_host ROLE IP
    local ns="$ID-$1"
    add_ns "$ns"
    PORT=$((PORT + 1))
    ip -n "$SW" link add "v$PORT" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "v$PORT" master br0 up
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
}
ip_of() { echo "${1%:*}"; }
run_in() { local ns="$ID-$1"; shift; ip netns exec "$ns" "$@"; }
wait_for() {                                 # wait_for SECONDS WHAT COMMAND...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out after ${secs}s waiting for $what" >&2
    return 1
}

say "creating the lab ($ID-*)"
SW="$ID-sw"
add_ns "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
add_host coord "$(ip_of "$COORDINATOR_ADDR")"
add_host relay "$(ip_of "$RELAY_ADDR")"
add_host a "$(ip_of "$NODE_A_ADDR")"
add_host b "$(ip_of "$NODE_B_ADDR")"
add_host c "$(ip_of "$NODE_C_ADDR")"
add_host d "$(ip_of "$NODE_D_ADDR")"
# a and b cannot reach each other directly: they go through the relay.
for pair in "a $(ip_of "$NODE_B_ADDR")" "b $(ip_of "$NODE_A_ADDR")"; do
    set -- $pair
    run_in "$1" nft -f - <<EOF
table inet capture {
    chain input { type filter hook input priority filter; ip saddr $2 drop; }
}
EOF
done

# Every datagram crosses the switch once, entering it from its sender's port.
ip netns exec "$SW" tcpdump -i any -Q in -U -n -w "$WORK/lab.pcap" udp 2>"$WORK/tcpdump.log" &
TCPDUMP_PID=$!
wait_for 10 "tcpdump" grep -q "listening" "$WORK/tcpdump.log"

# --- 3. Coordinator, relay, nodes -------------------------------------------------------
say "starting the coordinator, the relay and the nodes"
"$SEEDGEN" init-coordinator "$WORK/coord"
ip netns exec "$ID-coord" "$BIN/coordinator" serve --listen "$COORDINATOR_ADDR" \
    --data-dir "$WORK/coord" >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
wait_for 20 "the coordinator" bash -c "ip netns exec '$ID-coord' ss -Hlnu 'sport = :${COORDINATOR_ADDR##*:}' | grep -q ."

key_dir() {                                  # key_dir DIR NAME KEY: a state dir with a key
    mkdir -p -m 700 "$1"
    (umask 077 && echo "$3" >"$1/$2.key")
}
key_dir "$WORK/relay" relay "$RELAY_KEY"
ip netns exec "$ID-relay" "$BIN/relay" serve --listen "$RELAY_ADDR" --coordinator "$COORDINATOR_ADDR" \
    --auth-key "$RELAY_JOIN_KEY" --state-dir "$WORK/relay" --name r1 >"$WORK/relay.log" 2>&1 &
PIDS+=($!)
wait_for 20 "the relay" ip netns exec "$ID-relay" "$BIN/relay" status --state-dir "$WORK/relay"

declare -A NODE_PID
start_node() {                               # start_node NAME KEY [--auth-key K]
    local n=$1 key=$2
    shift 2
    key_dir "$WORK/node-$n" node "$key"
    ip netns exec "$ID-$n" "$BIN/node" up --coordinator "$COORDINATOR_ADDR" --name "$n" \
        --state-dir "$WORK/node-$n" --port 41641 --dns off "$@" >"$WORK/node-$n.log" 2>&1 &
    NODE_PID[$n]=$!
    PIDS+=($!)
}
start_node a "$NODE_A_KEY" --auth-key "$NODE_JOIN_KEY"
start_node b "$NODE_B_KEY" --auth-key "$NODE_JOIN_KEY"
start_node c "$NODE_C_KEY" --auth-key "$NODE_JOIN_KEY"
start_node d "$NODE_D_KEY"                   # no key: turned away

status_json() { run_in "$1" "$BIN/node" status --state-dir "$WORK/node-$1" --json 2>/dev/null; }
has_peers() { [ "$(status_json "$1" | grep -c '"path"')" -ge 2 ]; }
say "waiting for the mesh"
for n in a b c; do wait_for 40 "node $n to see its peers" has_peers "$n"; done
mesh_ip() { status_json "$1" | grep -o '"mesh_ip" *: *"[^"]*"' | sed -n '1{s/.*"\([^"]*\)"$/\1/; s|/.*||; p}'; }
declare -A IP
for n in a b c; do IP[$n]=$(mesh_ip "$n"); done
# Tunnels are built on the first packet: the first ping of each pair may wait for a path.
for from in a b c; do
    for to in a b c; do
        [ "$from" = "$to" ] && continue
        wait_for 20 "$from to reach $to" run_in "$from" ping -c 1 -W 1 "${IP[$to]}" || true
    done
done

# --- 4. Traffic --------------------------------------------------------------------------
say "traffic: pings (direct and relayed), node ping, netcheck"
for from in a b c; do
    for to in a b c; do
        [ "$from" = "$to" ] && continue
        run_in "$from" ping -n -q -c 2 -i 0.2 -W 1 "${IP[$to]}" >/dev/null || true
        run_in "$from" ping -n -q -c 1 -s 1200 -W 1 "${IP[$to]}" >/dev/null || true
    done
done
run_in a "$BIN/node" ping b -c 2 --state-dir "$WORK/node-a" || true
run_in a "$BIN/node" ping c -c 2 --state-dir "$WORK/node-a" || true
run_in c "$BIN/node" ping a -c 1 --state-dir "$WORK/node-c" || true
run_in a "$BIN/node" netcheck --state-dir "$WORK/node-a" >/dev/null || true
sleep 3                                      # heartbeats, binds, keepalives

say "the admin removes node c; then everyone stops"
run_in coord "$BIN/coordinator" nodes remove c --data-dir "$WORK/coord" || true
sleep 2
kill -TERM "${PIDS[@]}" 2>/dev/null || true
sleep 2
kill -INT "$TCPDUMP_PID" 2>/dev/null || true
wait "$TCPDUMP_PID" 2>/dev/null || true
TCPDUMP_PID=

# --- 5. Split into seeds -----------------------------------------------------------------
say "extracting datagrams"
python3 - "$WORK/lab.pcap" >"$WORK/datagrams.txt" <<'PY'
# Reads a pcap (Ethernet, Linux cooked v1 or v2) and prints one UDP/IPv4 datagram per line:
# "seconds src_ip:port dst_ip:port payload_hex" (each datagram once).
import struct, sys
data = open(sys.argv[1], "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
linktype = struct.unpack(endian + "I", data[20:24])[0]
at, seen = 24, set()
while at + 16 <= len(data):
    sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[at:at + 16])
    pkt = data[at + 16:at + 16 + caplen]
    at += 16 + caplen
    if linktype == 1:                # Ethernet
        proto, ip = struct.unpack(">H", pkt[12:14])[0], pkt[14:]
    elif linktype == 113:            # Linux cooked v1
        proto, ip = struct.unpack(">H", pkt[14:16])[0], pkt[16:]
    elif linktype == 276:            # Linux cooked v2
        proto, ip = struct.unpack(">H", pkt[0:2])[0], pkt[20:]
    else:
        sys.exit(f"unsupported link type {linktype}")
    if proto != 0x0800 or len(ip) < 20 or ip[9] != 17:
        continue
    ihl = (ip[0] & 15) * 4
    if struct.unpack(">H", ip[6:8])[0] & 0x3FFF:
        continue                     # a fragment
    udp = ip[ihl:]
    sport, dport, ulen = struct.unpack(">HHH", udp[:6])
    payload = udp[8:ulen]
    src = "%d.%d.%d.%d:%d" % (*ip[12:16], sport)
    dst = "%d.%d.%d.%d:%d" % (*ip[16:20], dport)
    key = (src, dst, payload)
    if key in seen:
        continue
    seen.add(key)
    t = sec + frac / (1e9 if nano else 1e6)
    print("%.6f %s %s %s" % (t, src, dst, payload.hex()))
PY
echo "$(wc -l <"$WORK/datagrams.txt") datagrams"
cp "$WORK/datagrams.txt" fuzz/target/capture-datagrams.txt
split_seeds "$WORK/datagrams.txt" "$WORK"
