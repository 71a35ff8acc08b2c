#!/usr/bin/env bash
# Benchmark of `hoard export` (restore by index, live):
#   1. `qemu-img convert` of the export to a raw file vs `hoard restore` of
#      the same snapshot (issue target: >= 0.7 x), with nbdcopy and a
#      qemu-nbd export of the original raw file beside them;
#   2. random 4 KiB reads through qemu-io: latency p50/p99 with a cold cache
#      (fresh export, page cache dropped) and a warm one (the same offsets
#      again), next to the same reads from qemu-nbd serving the raw image.
#
#   benches/export.sh                     4 GiB ext4 image (scripts/make-image.sh)
#   SIZE_MB=1024 REPEAT=3 READS=300 benches/export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-4096}
REPEAT=${REPEAT:-3}
READS=${READS:-300}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
IMG=$WORK/disk-${SIZE_MB}M.img
mkdir -p "$WORK"

# HOARD=BINARY measures that binary instead of building this tree's.
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
[ -s "$IMG" ] || scripts/make-image.sh "$IMG" "$SIZE_MB"
BYTES=$(stat -c %s "$IMG")
STORE=$WORK/export-store
OUT=$WORK/export-out.img
SOCK=$WORK/export.sock
QSOCK=$WORK/qemu-nbd.sock
rm -rf "$STORE"; "$HOARD" --store "$STORE" init --chunk-size 4M >/dev/null
"$HOARD" --store "$STORE" backup --id bench "disk.img:$IMG" >/dev/null
SNAP=$("$HOARD" --store "$STORE" snapshots | tail -1 | awk '{print $1}')
URI="nbd+unix:///disk.img?socket=$SOCK"
QURI="nbd+unix:///?socket=$QSOCK"

EXPORT_PID=
start_export() { # extra args...
    "$HOARD" --store "$STORE" export "$SNAP" disk.img --socket "$SOCK" "$@" >/dev/null 2>"$WORK/export.log" &
    EXPORT_PID=$!
    for _ in $(seq 100); do [ -S "$SOCK" ] && return; sleep 0.05; done
    echo "export did not start" >&2; cat "$WORK/export.log" >&2; exit 1
}
stop_export() { kill -TERM "$EXPORT_PID" 2>/dev/null || true; wait "$EXPORT_PID" 2>/dev/null || true; }
qemu-nbd -r -f raw --socket "$QSOCK" --persistent --shared 8 "$IMG" &
QNBD_PID=$!
trap 'stop_export; kill $QNBD_PID 2>/dev/null || true; rm -f "$OUT"' EXIT
for _ in $(seq 100); do [ -S "$QSOCK" ] && break; sleep 0.05; done

now() { date +%s.%N; }
declare -A SECS
measure() { # NAME COMMAND...   best of $REPEAT, output file removed before each
    local t0 t1 s best=""
    for _ in $(seq "$REPEAT"); do
        rm -f "$OUT"; sync
        t0=$(now); "${@:2}" >/dev/null; t1=$(now)
        s=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
    done
    SECS[$1]=$best
}

cat "$IMG" >/dev/null
measure restore "$HOARD" --store "$STORE" restore "$SNAP" disk.img "$OUT"
start_export
measure convert qemu-img convert -O raw "$URI" "$OUT"
cmp "$IMG" "$OUT" || { echo "CONVERT MISMATCH" >&2; exit 1; }
measure nbdcopy nbdcopy "$URI" "$OUT"
measure qemu-nbd qemu-img convert -O raw "$QURI" "$OUT"
stop_export

# Random 4 KiB-aligned offsets, the same for every run, one in each of
# READS different chunks that hold data (from the export's block status):
# every cold read needs a chunk loaded, none is a hole answered for free.
start_export
CHUNK=$((4 << 20))
CMDS=()
while read -r off; do CMDS+=(-c "read $off 4096"); done < <(
    nbdinfo --map "$URI" | awk -v c="$CHUNK" '$3 == 0 { for (o = $1; o + c <= $1 + $2; o += c) print o / c }' |
    awk -v n="$READS" -v c="$CHUNK" 'BEGIN { srand(42) } { k[NR] = $1 }
        END { for (i = NR; i > 1; i--) { j = int(rand() * i) + 1; t = k[i]; k[i] = k[j]; k[j] = t }
              for (i = 1; i <= n && i <= NR; i++) printf "%d\n", k[i] * c + int(rand() * (c / 4096)) * 4096 }')
stop_export
# qemu-io prints "... (X MiB/sec and R ops/sec)" per read: latency = 1/R.
latencies() { qemu-io -r -f raw "${CMDS[@]}" "$1" | sed -n 's/.* and \([0-9.]*\) ops\/sec.*/\1/p' | awk '{ printf "%.3f\n", 1000 / $1 }' | sort -n; }
pct() { awk -v p="$1" '{ a[NR] = $1 } END { i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i] }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(cannot drop the page cache: cold figures are warm-ish)" >&2; }

start_export --cache-size 2G
drop_caches
COLD=$(latencies "$URI")
WARM=$(latencies "$URI")
stop_export
drop_caches
QCOLD=$(latencies "$QURI")
QWARM=$(latencies "$QURI")

echo "best of $REPEAT runs each; machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: $IMG, $BYTES bytes, chunk size 4 MiB"
printf '%-42s %8s %8s\n' "copy of the whole image" seconds MB/s
row() { printf '%-42s %8.2f %8s\n' "$1" "${SECS[$2]}" "$(echo "scale=0; $BYTES / 1000000 / ${SECS[$2]}" | bc -l)"; }
row "hoard restore" restore
row "qemu-img convert from hoard export" convert
row "nbdcopy from hoard export" nbdcopy
row "qemu-img convert from qemu-nbd (raw file)" qemu-nbd
echo "convert from export / restore:    $(echo "scale=2; ${SECS[restore]} / ${SECS[convert]}" | bc -l)  (target >= 0.7)"
echo "nbdcopy from export / restore:    $(echo "scale=2; ${SECS[restore]} / ${SECS[nbdcopy]}" | bc -l)"
printf '%-42s %8s %8s %8s\n' "random 4 KiB reads, $(( ${#CMDS[@]} / 2 )) data chunks" "p50 ms" "p90 ms" "p99 ms"
lat() { printf '%-42s %8s %8s %8s\n' "$1" "$(pct 50 <<<"$2")" "$(pct 90 <<<"$2")" "$(pct 99 <<<"$2")"; }
lat "hoard export, cold" "$COLD"
lat "hoard export, warm" "$WARM"
lat "qemu-nbd raw file, cold" "$QCOLD"
lat "qemu-nbd raw file, warm" "$QWARM"
