#!/usr/bin/env bash
# Builds lanmesh and runs all its tests, including the end-to-end tests, which start the
# real coordinator and node binaries in private network namespaces and so need root.
#
#   ./test.sh                          everything
#   ./test.sh -p lanmesh-e2e           extra arguments go to `cargo test`
#   ./test.sh -- three_nodes_mesh      ... e.g. a test name filter
#
# The build runs as the invoking user; the tests run as root (re-run through sudo when
# needed). Exits with the status of `cargo test`.
# Useful variables: LANMESH_KEEP_LAB=1 keeps each lab's logs and data dirs in /tmp;
# RUST_LOG is passed on to the binaries.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

is_root() { [ "$(id -u)" -eq 0 ]; }
have_sudo() { command -v sudo >/dev/null 2>&1; }

# 1. System tools (ip, nft, ping, conntrack).
if is_root; then
    bash scripts/deps.sh
elif ! bash scripts/deps.sh --check && have_sudo; then
    sudo bash scripts/deps.sh
fi

# 2. Build, as the invoking user: this version, and the previous one for the mixed-version
#    tests (once; it is kept in target/previous/).
cargo build --release --bins
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
export LANMESH_BIN_DIR="$TARGET/release"
LANMESH_PREVIOUS_BIN_DIR="$(bash scripts/build-previous.sh)"
export LANMESH_PREVIOUS_BIN_DIR

# 3. Test, as root.
if is_root; then
    exec cargo test --workspace --release --no-fail-fast "$@"
fi

# Compile the tests as this user first, so that root does not leave root-owned files in
# target/. Only the cargo options (before a `--`) matter here.
build_args=()
for a in "$@"; do
    [ "$a" = "--" ] && break
    build_args+=("$a")
done
cargo test --workspace --release --no-run "${build_args[@]}"

if ! have_sudo; then
    echo "test.sh: not root and no sudo: the end-to-end tests will be skipped" >&2
    exec cargo test --workspace --release --no-fail-fast "$@"
fi
echo "test.sh: running the tests as root (sudo)" >&2
# sudo resets the environment: pass on what cargo (rustup's proxy) and the tests need.
env_args=(
    "PATH=$PATH"
    "CI=${CI:-}"
    "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}"
    "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}"
    "CARGO_TARGET_DIR=$TARGET"
    "LANMESH_BIN_DIR=$LANMESH_BIN_DIR"
    "LANMESH_PREVIOUS_BIN_DIR=$LANMESH_PREVIOUS_BIN_DIR"
)
for v in LANMESH_KEEP_LAB RUST_LOG RUST_BACKTRACE; do
    if [ -n "${!v:-}" ]; then env_args+=("$v=${!v}"); fi
done
exec sudo env "${env_args[@]}" cargo test --workspace --release --no-fail-fast "$@"
