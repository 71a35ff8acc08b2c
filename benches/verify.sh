#!/usr/bin/env bash
# Verify throughput against `b3sum --num-threads 2` over the same pack files,
# page cache warm, best of $REPEAT runs. Uses the store benches/e2e.sh left
# in $BENCH_DIR (run that first).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
STORE=$WORK/store
[ -f "$STORE/config.json" ] || { echo "no store in $STORE: run benches/e2e.sh first" >&2; exit 1; }
cargo build --release -q -p hoard-cli
HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
mapfile -t PACKS < <(find "$STORE/packs" -name '*.pack')
PACK_BYTES=$(du -cb "${PACKS[@]}" | tail -1 | cut -f1)
cat "${PACKS[@]}" >/dev/null
best() {
    local best="" s t0 t1
    for _ in $(seq "$REPEAT"); do
        t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
        s=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
    done
    echo "$best"
}
B3=$(best b3sum --num-threads 2 "${PACKS[@]}")
VERIFY=$(best "$HOARD" --store "$STORE" verify)
RAW=$("$HOARD" --store "$STORE" verify --json | grep '"bytes"' | tr -dc 0-9)
echo "packs: ${#PACKS[@]} files, $PACK_BYTES bytes holding $RAW bytes of chunk data"
printf '%-34s %8.2f s %8s MB/s of packs\n' "b3sum --num-threads 2 (packs)" "$B3" "$(echo "scale=0; $PACK_BYTES / 1000000 / $B3" | bc -l)"
printf '%-34s %8.2f s %8s MB/s of packs, %s MB/s of chunk data\n' "hoard verify" "$VERIFY" \
    "$(echo "scale=0; $PACK_BYTES / 1000000 / $VERIFY" | bc -l)" "$(echo "scale=0; $RAW / 1000000 / $VERIFY" | bc -l)"
echo "verify / b3sum, pack bytes per second: $(echo "scale=2; $B3 / $VERIFY" | bc -l)  (target >= 0.7)"
