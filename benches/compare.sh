#!/usr/bin/env bash
# Runs benches/e2e.sh, tree.sh and export.sh with two hoard binaries, one
# after the other for each script, in one run on one machine state, and
# prints each script's report for both: a change must keep every
# ratio within 5% of the old binary's.
#
#   OLD_HOARD=/path/to/old/hoard benches/compare.sh          (new: this tree)
#   SCRIPTS="e2e export" OLD_HOARD=... benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD_HOARD:?set OLD_HOARD to the binary to compare against}"
cargo build --release -q -p hoard-cli
NEW_HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
OLD_HOARD=$(realpath "$OLD_HOARD")
OUT=${BENCH_DIR:-/var/tmp/hoard-bench}/compare
mkdir -p "$OUT"
for s in ${SCRIPTS:-e2e tree export}; do
    for which in old new; do
        bin=$OLD_HOARD; [ "$which" = new ] && bin=$NEW_HOARD
        echo "== $s.sh, $which binary ($bin)"
        HOARD=$bin "benches/$s.sh" >"$OUT/$s-$which.txt" 2>&1 || { cat "$OUT/$s-$which.txt"; exit 1; }
    done
    for which in old new; do
        echo "-- $s.sh $which:"
        cat "$OUT/$s-$which.txt"
    done
done
