#!/usr/bin/env bash
# Average CDC chunk size for tree archives: for each of $SIZES, on the tree of
# benches/tree.sh (run that first), page cache warm, one run each:
#   first backup: seconds, MB/s, stored bytes;
#   after appending a line to 2% of the files, a --full-read backup (every
#   file re-chunked): seconds and store growth relative to the bytes changed
#   (how well CDC finds the unchanged data again).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/tree
SIZES=${SIZES:-64K 256K 1M 4M}
SRC=$WORK/src
[ -d "$SRC" ] || { echo "no $SRC: run benches/tree.sh first" >&2; exit 1; }
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)
packs() { du -sb "$1/packs" | cut -f1; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# The same 2% of files for every size: a fixed list, each gets one appended line.
mapfile -t CHANGE < <(find "$SRC" -type f -size +0 | sort | awk 'NR % 50 == 0')
printf '%-6s %9s %8s %12s %11s %13s %9s\n' avg "first s" "MB/s" "stored MB" "full-read s" "growth MB" "/changed"
for AVG in $SIZES; do
    S=$WORK/store-$AVG
    rm -rf "$S"; "$HOARD" --store "$S" init >/dev/null
    read -r t1 < <("$HOARD" --store "$S" backup --kind ct --id 1 --tree-chunk-avg "$AVG" root.tree:"$SRC" --json | field 'd["duration_secs"]')
    p1=$(packs "$S")
    changed=0
    for f in "${CHANGE[@]}"; do printf 'appended by the benchmark\n' >>"$f" && changed=$((changed + 26)); done
    read -r t2 < <("$HOARD" --store "$S" backup --kind ct --id 1 --tree-chunk-avg "$AVG" --full-read root.tree:"$SRC" --json | field 'd["duration_secs"]')
    p2=$(packs "$S")
    printf '%-6s %9.2f %8.0f %12.1f %11.2f %13.1f %9.0f\n' "$AVG" "$t1" "$(echo "$BYTES/1000000/$t1" | bc -l)" \
        "$(echo "$p1/1000000" | bc -l)" "$t2" "$(echo "($p2-$p1)/1000000" | bc -l)" "$(echo "($p2-$p1)/$changed" | bc -l)"
    rm -rf "$S"
done
echo "($(find "$SRC" -type f | wc -l) files, $BYTES bytes; ${#CHANGE[@]} files changed per size)"
