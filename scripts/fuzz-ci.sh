#!/usr/bin/env bash
# CI fuzzing: builds every fuzz target once (cargo-fuzz, libFuzzer), then runs each for
# FUZZ_SECONDS (default 30) on a temporary copy of its stored corpus (fuzz/corpus/<target>)
# and its regression inputs (fuzz/regressions/<target>), so the tree stays clean. Exits
# non-zero if any target crashes (a panic, a failed assertion, a hang over FUZZ_TIMEOUT
# seconds, or running out of memory), printing the target, the crashing input in hex, the
# panic and a short backtrace. Crashing inputs are written to
# FUZZ_ARTIFACTS (default: a temporary directory that is printed).
#
#   scripts/fuzz-ci.sh                 all targets
#   scripts/fuzz-ci.sh stun probe      some of them
#
# Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly toolchain when
# missing. Build: `cargo +nightly fuzz build -O -s none`: release optimizations, no
# AddressSanitizer (the code under test is safe Rust), with debug assertions and overflow
# checks on (from fuzz/Cargo.toml's release profile; off only in curve25519-dalek's field
# arithmetic, for speed). Assertions for known, reported bugs can be switched off with
# LANMESH_FUZZ_KNOWN_BUGS=name,name (see fuzz/README.md); CI leaves them on.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
SECS=${FUZZ_SECONDS:-30}
TIMEOUT=${FUZZ_TIMEOUT:-20}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "==> toolchain and cargo-fuzz"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

echo "==> building the fuzz targets"
# The fuzz workspace has its own lock file (not committed): start from the workspace's, so
# shared crates build at the same versions.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
cargo "+$TOOLCHAIN" fuzz build -O -s none --target-dir fuzz/target
TRIPLE=$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')
BIN="$ROOT/fuzz/target/$TRIPLE/release"
BUILT=$(date +%s)

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in fuzz/fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lanmesh-fuzz-ci.XXXXXX")
ARTIFACTS=${FUZZ_ARTIFACTS:-$WORK/artifacts}
mkdir -p "$ARTIFACTS"
trap 'rm -rf "$WORK/corpus"' EXIT

failed=()
printf '\n%-18s %10s %9s %6s %7s %s\n' target execs exec/s cov ft result
for t in "${TARGETS[@]}"; do
    corpus="$WORK/corpus/$t"
    mkdir -p "$corpus"
    for dir in "fuzz/corpus/$t" "fuzz/regressions/$t"; do
        if [ -d "$dir" ]; then cp -r "$dir/." "$corpus/"; fi
    done
    log="$WORK/$t.log"
    status=0
    RUST_BACKTRACE=1 "$BIN/$t" -max_total_time="$SECS" -timeout="$TIMEOUT" -print_final_stats=1 \
        -artifact_prefix="$ARTIFACTS/$t-" "$corpus" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    final=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")
    crash=$(ls "$ARTIFACTS/$t-"* 2>/dev/null | head -1 || true)
    if [ $status -eq 0 ] && [ -z "$crash" ]; then
        result=ok
    else
        result="CRASH (exit $status)"
        failed+=("$t")
    fi
    printf '%-18s %10s %9s %6s %7s %s\n' "$t" "${execs:--}" "${speed:--}" "${cov:--}" "${ft:--}" "$result"
    if [ "$result" != ok ]; then
        echo "---- $t crashed"
        if [ -n "$crash" ]; then
            echo "input: $crash ($(stat -c %s "$crash") bytes)"
            echo "hex: $(od -An -v -tx1 "$crash" | tr -d ' \n')"
        else
            echo "no crashing input was written; the log ends:"
        fi
        # The panic message and the frames that are ours (lanmesh crates and the target).
        grep -E -A4 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | grep -v "^--$" | head -20 || true
        grep -E "^ +[0-9]+: .*(lanmesh|fuzz_targets|$t::)" "$log" | head -12 || true
        grep -E "^ +at .*(proto|coordinator|node|relay|fuzz)/" "$log" | head -12 || true
        echo "reproduce: cargo +$TOOLCHAIN fuzz run -O -s none $t <input file>"
        echo "----"
    fi
done

END=$(date +%s)
echo
echo "build $((BUILT - START)) s, fuzzing $((END - BUILT)) s, total $((END - START)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (crashing inputs in $ARTIFACTS)"
    exit 1
fi
rm -rf "$WORK"
echo "all ${#TARGETS[@]} targets ran ${SECS} s each without a crash"
