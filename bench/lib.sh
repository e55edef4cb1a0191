# Shared by the bench scripts (sourced, not run): build as the invoking user, then run the
# bench binary as root (through sudo when needed: the labs need network namespaces), with
# the system tools of scripts/deps.sh.
#
#   source bench/lib.sh
#   bench_build lanmesh-bench-first-ping      # sets BENCH; exports LANMESH_BIN_DIR & co
#   bench_exec "$@"                           # runs it as root (does not return)
#
# BENCH_ROOT_SETUP, if set, is the name of a shell function to run as root first (e.g. to
# install a tool only this bench needs).

ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

# Builds everything, or only the bench tools when LANMESH_BIN_DIR names the binaries to use.
bench_build() {
    if [ -z "${LANMESH_BIN_DIR:-}" ]; then
        cargo build --release --bins
    else
        cargo build --release -p lanmesh-e2e --bins
    fi
    export LANMESH_BIN_DIR="${LANMESH_BIN_DIR:-$TARGET/release}"
    BENCH="$TARGET/release/$1"
    # The test tools are not in LANMESH_BIN_DIR necessarily.
    export LANMESH_TESTKIT="${LANMESH_TESTKIT:-$TARGET/release/lanmesh-testkit}"
    export LANMESH_ATTACK="${LANMESH_ATTACK:-$TARGET/release/lanmesh-attack}"
}

bench_exec() {
    local name
    name=$(basename "$0")
    local setup="${BENCH_ROOT_SETUP:-true}"
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "$name: needs root (network namespaces) and there is no sudo" >&2
            exit 1
        fi
        if ! bash scripts/deps.sh --check; then sudo bash scripts/deps.sh; fi
        local env_args=("LANMESH_BIN_DIR=$LANMESH_BIN_DIR" "LANMESH_TESTKIT=$LANMESH_TESTKIT"
            "LANMESH_ATTACK=$LANMESH_ATTACK" "PATH=$PATH")
        local v
        for v in LANMESH_KEEP_LAB RUST_LOG LANMESH_BORINGTUN; do
            if [ -n "${!v:-}" ]; then env_args+=("$v=${!v}"); fi
        done
        if [ "$setup" = true ]; then
            exec sudo env "${env_args[@]}" "$BENCH" "$@"
        fi
        exec sudo env "${env_args[@]}" bash -c "$(declare -f "$setup"); $setup; exec \"\$0\" \"\$@\"" "$BENCH" "$@"
    fi
    bash scripts/deps.sh
    "$setup"
    exec "$BENCH" "$@"
}
