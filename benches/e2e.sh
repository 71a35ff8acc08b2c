#!/usr/bin/env bash
# End-to-end benchmark: hoard against baselines measured in the same run on
# the same file, page cache warm.
#
#   benches/e2e.sh            4 GiB ext4 image (scripts/make-image.sh), kept in $BENCH_DIR
#   SIZE_MB=1024 benches/e2e.sh
#
# Prints MB/s for each step and the ratios the storage-core issue targets:
#   first backup      >= 0.85 x zstd -1 -T2
#   unchanged backup  >= 0.8  x b3sum --num-threads 2
#   restore to a file >= 1.5  x first backup
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-4096}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
IMG=$WORK/disk-${SIZE_MB}M.img
mkdir -p "$WORK"

cargo build --release -q -p hoard-cli
HOARD=${CARGO_TARGET_DIR:-target}/release/hoard

if [ ! -s "$IMG" ]; then
    scripts/make-image.sh "$IMG" "$SIZE_MB"
fi
BYTES=$(stat -c %s "$IMG")
cat "$IMG" >/dev/null; cat "$IMG" >/dev/null   # warm the page cache

now() { date +%s.%N; }
declare -A SECS
measure() { # name command...
    local t0 t1
    sync  # no step pays for the previous step's write-back
    t0=$(now); "${@:2}" >/dev/null; t1=$(now)
    SECS[$1]=$(echo "$t1 - $t0" | bc -l)
}
mbps() { echo "scale=0; $BYTES / 1000000 / ${SECS[$1]}" | bc -l; }

STORE=$WORK/store; rm -rf "$STORE" "$WORK/restored.img"
"$HOARD" --store "$STORE" init >/dev/null

measure cat       sh -c "cat '$IMG' >/dev/null"
measure b3sum     b3sum --num-threads 2 "$IMG"
measure zstd      sh -c "zstd -1 -T2 -q -c '$IMG' >/dev/null"
measure first     "$HOARD" --store "$STORE" backup --id bench --json "disk.img:$IMG"
measure unchanged "$HOARD" --store "$STORE" backup --id bench --json "disk.img:$IMG"
SNAP=$("$HOARD" --store "$STORE" snapshots | tail -1)
measure restore   "$HOARD" --store "$STORE" restore "$SNAP" disk.img "$WORK/restored.img"
cmp "$IMG" "$WORK/restored.img" || { echo "RESTORE MISMATCH" >&2; exit 1; }

STORED=$(du -sb "$STORE/packs" | cut -f1)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: $IMG, $BYTES bytes, store packs $STORED bytes ($(echo "scale=3; $STORED / $BYTES" | bc -l) of the image)"
printf '%-22s %8s %8s\n' step seconds MB/s
for k in cat b3sum zstd first unchanged restore; do
    printf '%-22s %8.2f %8s\n' "$k" "${SECS[$k]}" "$(mbps $k)"
done
ratio() { echo "scale=2; ${SECS[$2]} / ${SECS[$1]}" | bc -l; }
echo "first backup / zstd -1 -T2:        $(ratio first zstd)  (target >= 0.85)"
echo "unchanged backup / b3sum -T2:      $(ratio unchanged b3sum)  (target >= 0.8)"
echo "restore / first backup:            $(ratio restore first)  (target >= 1.5)"
rm -f "$WORK/restored.img"
