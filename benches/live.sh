#!/usr/bin/env bash
# Live backups through qemu-storage-daemon + NBD on the realistic 4 GiB image
# of benches/e2e.sh (run that first), page cache warm, in one run:
#  - full backup-qemu vs `hoard backup` of the same image from a file;
#  - day-2 incrementals after 1% and 5% of the bytes changed in scattered
#    64 KiB writes of random data: time relative to the full, bytes read, and
#    store growth relative to the changed bytes;
#  - all of it for chunk sizes $SIZES (what chose the image default).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
SIZES=${SIZES:-64K 256K 1M 4M}
IMG=$WORK/disk-4096M.img
[ -f "$IMG" ] || { echo "no $IMG: run benches/e2e.sh first" >&2; exit 1; }
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
T=$WORK/live
rm -rf "$T" && mkdir -p "$T"
QSD_PID=""
cleanup() {
    if [ -n "$QSD_PID" ]; then
        kill "$QSD_PID" 2>/dev/null || true
        while [ -e "/proc/$QSD_PID" ]; do sleep 0.05; done
        QSD_PID=""
    fi
}
trap cleanup EXIT
SIZE=$(stat -c %s "$IMG")
BLOCKS=$((SIZE / 65536))

start_qsd() {
    cleanup
    rm -f "$T/disk.qcow2" "$T/qmp.sock" "$T/nbd.sock"
    qemu-img convert -f raw -O qcow2 "$IMG" "$T/disk.qcow2"
    qemu-storage-daemon --chardev socket,path="$T/qmp.sock",server=on,wait=off,id=qmp0 --monitor chardev=qmp0 \
        --blockdev driver=file,node-name=file0,filename="$T/disk.qcow2",cache.direct=off \
        --blockdev driver=qcow2,node-name=disk0,file=file0 \
        --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
        --export type=nbd,id=rw,node-name=disk0,name=rw,writable=on --daemonize --pidfile "$T/qsd.pid"
    QSD_PID=$(cat "$T/qsd.pid")
}

# Scattered 64 KiB writes of random data covering PCT% of the disk.
dirty() { # PCT SEED
    local n=$((BLOCKS * $1 / 100)) args=()
    mapfile -t offs < <(python3 -c "
import random; r = random.Random($2)
for b in r.sample(range($BLOCKS), $n): print(b * 65536)")
    # Distinct random blocks, so that nothing dedups or compresses.
    rm -rf "$T/blocks" && mkdir "$T/blocks"
    head -c $((n * 65536)) /dev/urandom | split -b 65536 -a 6 - "$T/blocks/b"
    mapfile -t files < <(ls "$T/blocks")
    for i in "${!offs[@]}"; do args+=(-c "write -s $T/blocks/${files[$i]} ${offs[$i]} 64k"); done
    qemu-io -f raw "${args[@]}" "nbd+unix:///rw?socket=$T/nbd.sock" >/dev/null
    rm -rf "$T/blocks"
}

packs() { du -sb "$1/packs" | cut -f1; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
backup_live() { # STORE -> "seconds bytes_read"
    "$HOARD" --store "$1" backup-qemu --qmp "$T/qmp.sock" --nbd-socket "$T/nbd.sock" --id 1 \
        --disk disk0=disk.img --chunk-size "$CS" --json | field 'd["duration_secs"], sum(a["stats"]["bytes_read"] for a in d["archives"])' | tr -d '(),'
}

printf '%-6s %-22s %10s %10s %12s %14s\n' chunk step seconds "/ full" "MB read" "growth/changed"
for CS in $SIZES; do
    start_qsd
    S=$T/store-$CS
    "$HOARD" --store "$S" init --chunk-size "$CS" >/dev/null
    F=$T/file-$CS
    "$HOARD" --store "$F" init --chunk-size "$CS" >/dev/null
    read -r fsec _ < <("$HOARD" --store "$F" backup --id f disk.img:"$IMG" --json | field 'd["duration_secs"], d["bytes_read"]' | tr -d '(),')
    read -r full fread < <(backup_live "$S")
    printf '%-6s %-22s %10.2f %10s %12.0f %14s\n' "$CS" "file backup" "$fsec" "" "$(echo "$SIZE/1000000" | bc)" ""
    printf '%-6s %-22s %10.2f %10s %12.0f %14s   (live speed / file speed %.2f)\n' "$CS" "live full" "$full" "1.00" \
        "$(echo "$fread/1000000" | bc)" "" "$(echo "$fsec / $full" | bc -l)"
    for PCT in 1 5; do
        before=$(packs "$S")
        dirty "$PCT" "$PCT"
        read -r sec rd < <(backup_live "$S")
        after=$(packs "$S")
        changed=$((BLOCKS * PCT / 100 * 65536))
        printf '%-6s %-22s %10.2f %10.3f %12.0f %14.2f\n' "$CS" "incremental $PCT% dirty" "$sec" \
            "$(echo "$sec / $full" | bc -l)" "$(echo "$rd/1000000" | bc)" "$(echo "($after - $before) / $changed" | bc -l)"
    done
done
