#!/usr/bin/env bash
# Verify throughput against `b3sum --num-threads 2` over the same pack files,
# page cache warm, best of $REPEAT runs, on two stores:
#  - incompressible: a store of $RAND_MIB MiB of random data that this script
#    makes; verify does what b3sum does (read, BLAKE3) plus the record checks.
#  - compressible: the store benches/e2e.sh left in $BENCH_DIR (if present);
#    verify must also decompress every chunk, which b3sum over packs never does.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
RAND_MIB=${RAND_MIB:-2048}
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")

best() {
    local best="" s t0 t1
    for _ in $(seq "$REPEAT"); do
        t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
        s=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
    done
    echo "$best"
}

measure() { # LABEL STORE
    local label=$1 store=$2 packs pack_bytes raw b3 verify
    mapfile -t packs < <(find "$store/packs" -name '*.pack')
    pack_bytes=$(du -cb "${packs[@]}" | tail -1 | cut -f1)
    cat "${packs[@]}" >/dev/null
    b3=$(best b3sum --num-threads 2 "${packs[@]}")
    verify=$(best "$HOARD" --store "$store" verify)
    raw=$("$HOARD" --store "$store" verify --json | grep '"bytes"' | tr -dc 0-9)
    echo "== $label: ${#packs[@]} packs, $pack_bytes bytes holding $raw bytes of chunk data"
    printf '%-34s %6.2f s %6s MB/s of packs\n' "b3sum --num-threads 2 (packs)" "$b3" \
        "$(echo "scale=0; $pack_bytes / 1000000 / $b3" | bc -l)"
    printf '%-34s %6.2f s %6s MB/s of packs, %s MB/s of chunk data\n' "hoard verify" "$verify" \
        "$(echo "scale=0; $pack_bytes / 1000000 / $verify" | bc -l)" \
        "$(echo "scale=0; $raw / 1000000 / $verify" | bc -l)"
    echo "verify / b3sum, pack bytes per second: $(echo "scale=2; $b3 / $verify" | bc -l)"
}

RAND=$WORK/verify-random
if [ ! -f "$RAND/store/config.json" ]; then
    rm -rf "$RAND" && mkdir -p "$RAND"
    head -c "${RAND_MIB}M" /dev/urandom >"$RAND/random.img"
    "$HOARD" --store "$RAND/store" init >/dev/null
    "$HOARD" --store "$RAND/store" backup --id random disk.img:"$RAND/random.img" >/dev/null
    rm "$RAND/random.img"
fi
measure "incompressible (target >= 0.7)" "$RAND/store"
if [ -f "$WORK/store/config.json" ]; then
    measure "compressible, from benches/e2e.sh (decompression bound)" "$WORK/store"
else
    echo "== compressible: no store in $WORK/store (run benches/e2e.sh first)"
fi
