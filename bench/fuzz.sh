#!/usr/bin/env bash
# Fuzzing throughput and coverage: runs every fuzz target (one at a time) for RUNS executions
# (default 1,000,000) on a temporary copy of its stored corpus, and prints one line per
# target: executions, exec/s (over the wall time of the run), coverage (libFuzzer's `cov:`
# and `ft:` from its final stats line), corpus size at the end (inputs/bytes), crashes, and
# wall time.
#
#   bench/fuzz.sh                      1,000,000 runs per target
#   bench/fuzz.sh 5000000              longer
#   bench/fuzz.sh 1000000 coordinator  some targets only
#
# Same build as scripts/fuzz-ci.sh (`cargo +nightly fuzz build -O -s none`). A target stops
# at its first crash (its line then says so and where the input is). Assertions for known,
# reported bugs can be switched off with LANMESH_FUZZ_KNOWN_BUGS=name,name (see
# fuzz/README.md) to measure past them. Nothing is written into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-1000000}
[ $# -gt 0 ] && shift
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
cargo "+$TOOLCHAIN" fuzz build -O -s none --target-dir fuzz/target >&2
TRIPLE=$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')
BIN="$ROOT/fuzz/target/$TRIPLE/release"

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in fuzz/fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lanmesh-fuzz-bench.XXXXXX")
echo "runs per target: $RUNS; known bugs allowed: ${LANMESH_FUZZ_KNOWN_BUGS:-none}; work dir $WORK"
printf '%-18s %10s %8s %6s %7s %16s %8s %7s\n' target execs exec/s cov ft corpus crashes time
for t in "${TARGETS[@]}"; do
    corpus="$WORK/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$t" ]; then cp -r "fuzz/corpus/$t/." "$corpus/"; fi
    log="$WORK/$t.log"
    start=$(date +%s%N)
    "$BIN/$t" -runs="$RUNS" -timeout=20 -print_final_stats=1 -artifact_prefix="$WORK/$t-" \
        "$corpus" >"$log" 2>&1 || true
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    secs=$(( ms / 1000 ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(( ${execs:-0} * 1000 / (ms > 0 ? ms : 1) ))
    final=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$final")
    crashes=$(find "$WORK" -maxdepth 1 -name "$t-*" | wc -l)
    printf '%-18s %10s %8s %6s %7s %16s %8s %6ss\n' "$t" "${execs:--}" "${speed:--}" "${cov:--}" \
        "${ft:--}" "${corp:--}" "$crashes" "$secs"
    for c in "$WORK/$t-"*; do
        [ -e "$c" ] || continue
        echo "    crash: $c: $(grep -m1 -A1 'panicked at' "$log" | tail -1 | cut -c1-150)"
    done
done
rm -rf "$WORK/corpus"
