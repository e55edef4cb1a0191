#!/usr/bin/env bash
# lanmesh demo: one coordinator and three nodes (a, b, c) form a WireGuard mesh, then every
# node pings every other node by its mesh IP.
#
# Everything runs in network namespaces this script creates: a "switch" namespace with a
# bridge plays the internet (203.0.113.0/24, a documentation range), and the coordinator
# and each node get a namespace plugged into it. Nothing touches the host's own network.
# All of it is removed again when the script ends, also on Ctrl-C or an error.
#
#   ./demo.sh             (needs root for namespaces and TUN devices: re-runs itself with sudo)
#   ./demo.sh --no-wait   (do not wait for Enter before cleaning up)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

if [ -t 1 ]; then
    say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '\n==> %s\n' "$*"; }
fi

# --- 1. Build (as the invoking user), then become root ---------------------------------
if [ "${LANMESH_DEMO_BUILT:-}" != 1 ]; then
    say "building release binaries"
    cargo build --release --bins -p lanmesh-coordinator -p lanmesh-node
fi
BIN="${LANMESH_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "demo.sh needs root (network namespaces, TUN devices) and sudo is not installed" >&2
        exit 1
    fi
    say "the demo needs root for network namespaces; re-running with sudo"
    exec sudo env "PATH=$PATH" LANMESH_DEMO_BUILT=1 "LANMESH_BIN_DIR=$BIN" bash "$0" "$@"
fi
bash scripts/deps.sh

COORDINATOR="$BIN/coordinator"
NODE="$BIN/node"
for b in "$COORDINATOR" "$NODE"; do
    [ -x "$b" ] || { echo "missing binary $b" >&2; exit 1; }
done

# --- 2. Cleanup on exit -----------------------------------------------------------------
ID="lmdemo-$$"                       # prefix of every namespace this run creates
WORK=$(mktemp -d "/tmp/$ID.XXXXXX")  # data dirs, state dirs and logs
NAMESPACES=()
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [ ${#PIDS[@]} -gt 0 ]; then
        kill -TERM "${PIDS[@]}" 2>/dev/null
        for _ in $(seq 30); do                   # up to 3 s to exit cleanly
            local alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ $alive -eq 0 ] && break
            sleep 0.1
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null
        wait "${PIDS[@]}" 2>/dev/null
    fi
    for ns in "${NAMESPACES[@]}"; do
        # Anything else still running inside our namespaces goes too.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
    if [ $status -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "----- last lines of $log" >&2
            tail -n 20 "$log" >&2
        done
        echo "demo failed (status $status); logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
        say "cleaned up: processes stopped, namespaces deleted"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 3. The network ---------------------------------------------------------------------
add_ns() {                                   # add_ns NAME: a namespace with lo up
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
    # Its own /etc/hosts (`ip netns exec` mounts it over the machine's): nodes write peer
    # names there, never into this machine's /etc/hosts.
    mkdir -p "/etc/netns/$1"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"/etc/netns/$1/hosts"
}

PORT=0
add_host() {                                 # add_host ROLE IP: a namespace on the switch
    local ns="$ID-$1"
    add_ns "$ns"
    PORT=$((PORT + 1))
    # Both ends of the cable are created inside namespaces, never in the host's.
    ip -n "$SW" link add "v$PORT" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "v$PORT" master br0 up
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
}

say "creating the lab network (namespaces $ID-*)"
SW="$ID-sw"
add_ns "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
add_host coord 203.0.113.10
add_host a 203.0.113.11
add_host b 203.0.113.12
add_host c 203.0.113.13
echo "switch $SW; coordinator 203.0.113.10; nodes a .11, b .12, c .13"

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

# --- 4. Coordinator and join key ----------------------------------------------------------
say "starting the coordinator"
# (Started with `ip netns exec` directly, not through run_in, so that $! is the PID of the
# coordinator itself: `ip netns exec` replaces itself with the program.)
ip netns exec "$ID-coord" "$COORDINATOR" serve --listen 203.0.113.10:3478 --data-dir "$WORK/coordinator" \
    >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
wait_for 20 "the coordinator to listen" \
    bash -c "ip netns exec '$ID-coord' ss -Hlnu 'sport = :3478' | grep -q ."
echo "coordinator listening on 203.0.113.10:3478"

KEY=$(run_in coord "$COORDINATOR" keys create --data-dir "$WORK/coordinator" --reusable | tail -n 1)
echo "join key: $KEY"

# --- 5. Nodes --------------------------------------------------------------------------
NODES=(a b c)
for n in "${NODES[@]}"; do
    say "starting node $n"
    ip netns exec "$ID-$n" "$NODE" up --coordinator 203.0.113.10:3478 --auth-key "$KEY" \
        --name "$n" --state-dir "$WORK/node-$n" >"$WORK/node-$n.log" 2>&1 &
    PIDS+=($!)
done

status_json() { run_in "$1" "$NODE" status --state-dir "$WORK/node-$1" --json 2>/dev/null; }
peer_count() { status_json "$1" | grep -c '"path"'; }
# The node's own mesh IP is the first "mesh_ip" of its status (its peers come after it).
mesh_ip() {
    status_json "$1" | grep -o '"mesh_ip" *: *"[^"]*"' |
        sed -n '1{s/.*"\([^"]*\)"$/\1/; s|/.*||; p}'
}
has_peers() { [ "$(peer_count "$1")" -eq $((${#NODES[@]} - 1)) ]; }

say "waiting for the mesh to form"
declare -A IP
for n in "${NODES[@]}"; do
    wait_for 30 "node $n to see its peers" has_peers "$n"
    IP[$n]=$(mesh_ip "$n")
    [ -n "${IP[$n]}" ] || { echo "node $n has no mesh IP" >&2; exit 1; }
    echo "node $n: mesh IP ${IP[$n]}, $(peer_count "$n") peers"
done

# --- 6. Ping every pair -------------------------------------------------------------------
say "pinging every pair over the mesh"
failed=0
for from in "${NODES[@]}"; do
    for to in "${NODES[@]}"; do
        [ "$from" = "$to" ] && continue
        # The first packet may wait for a WireGuard handshake: give it a few tries.
        wait_for 15 "$from to reach $to" run_in "$from" ping -c 1 -W 1 "${IP[$to]}" || true
        if summary=$(run_in "$from" ping -n -q -c 3 -i 0.2 -W 1 "${IP[$to]}" 2>&1); then
            rtt=$(echo "$summary" | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
            printf '  %s -> %s (%s): ok, rtt avg %s ms\n' "$from" "$to" "${IP[$to]}" "${rtt:-?}"
        else
            printf '  %s -> %s (%s): FAILED\n' "$from" "$to" "${IP[$to]}"
            failed=1
        fi
    done
done

# --- 7. Peer names --------------------------------------------------------------------------
say "peer names (node a): ping b.mesh, getent hosts c.mesh"
wait_for 10 "b.mesh to resolve on a" run_in a getent hosts b.mesh || failed=1
if run_in a ping -n -q -c 1 -W 2 b.mesh >/dev/null 2>&1; then
    echo "  a -> b.mesh: ok"
else
    echo "  a -> b.mesh: FAILED"
    failed=1
fi
run_in a getent hosts c.mesh | sed 's/^/  /' || failed=1

# --- 8. What a node sees --------------------------------------------------------------------
say "node status (node a)"
run_in a "$NODE" status --state-dir "$WORK/node-a" || true
say "node status --json (node a)"
status_json a || true

if [ $failed -ne 0 ]; then
    echo "some pings failed" >&2
    exit 1
fi
say "the mesh works"
if [ -t 0 ] && [ "${1:-}" != "--no-wait" ]; then
    echo "Look around while it runs, e.g. in another terminal:"
    echo "  sudo ip netns exec $ID-a ping ${IP[c]}"
    echo "  sudo ip netns exec $ID-b $NODE status --state-dir $WORK/node-b"
    read -r -p "Press Enter to stop the demo and clean up. " _ || true
fi
