#!/usr/bin/env bash
# Builds the previous version of lanmesh — the commit named in tests/previous-version, the
# last one that landed before the current protocol changes — into target/previous/, for the
# mixed-version tests (tests/tests/compat.rs). Prints the directory holding its `coordinator`,
# `node` and `relay` binaries. Does nothing when they are already built for that commit.
#
#   bash scripts/build-previous.sh        build (if needed) and print the bin dir
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$(tr -d '[:space:]' < tests/previous-version)
out=$PWD/target/previous
if [ -x "$out/bin/node" ] && [ "$(cat "$out/rev" 2>/dev/null)" = "$rev" ]; then
    echo "$out/bin"
    exit 0
fi
if ! git cat-file -e "$rev^{commit}" 2>/dev/null; then
    echo "build-previous: commit $rev is not in this clone's history: clone without --depth" >&2
    exit 1
fi
rm -rf "$out/src" "$out/bin" "$out/rev"
mkdir -p "$out/src" "$out/bin"
git archive "$rev" | tar -x -C "$out/src"
echo "build-previous: building lanmesh ${rev:0:12} (the previous version)" >&2
CARGO_TARGET_DIR="$out/target" cargo build --release --bins --quiet \
    --manifest-path "$out/src/Cargo.toml" >&2
for b in coordinator node relay; do
    cp "$out/target/release/$b" "$out/bin/$b"
done
echo "$rev" > "$out/rev"
echo "$out/bin"
