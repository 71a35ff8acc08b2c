#!/usr/bin/env bash
# VM backup modes on the test guest of scripts/guest.sh (TCG), whose 1 GiB
# disk holds SIZE_MB (default 512) MiB of random data plus the log it keeps
# appending to. Per mode (its own store, so each starts with a full read
# into an empty store): downtime, wall time of the first (full) backup and
# of an incremental one 2 s later, next to `b3sum` and `zstd -1 -T2` of
# the same qcow2 file (page cache warm) in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-512}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/vm
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
G=$(scripts/guest.sh)
rm -rf "$WORK"; mkdir -p "$WORK/content"
head -c $((SIZE_MB << 20)) /dev/urandom >"$WORK/content/data.bin"
truncate -s 1G "$WORK/vm.raw"
mkfs.ext4 -q -F -d "$WORK/content" "$WORK/vm.raw"
qemu-img convert -O qcow2 "$WORK/vm.raw" "$WORK/vm.qcow2"
rm -rf "$WORK/vm.raw" "$WORK/content"
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nodefaults -display none -no-user-config -no-shutdown \
    -kernel "$G/vmlinuz" -initrd "$G/initrd.gz" -append 'console=ttyS0 quiet panic=-1 nokaslr' \
    -serial "file:$WORK/serial.log" -qmp "unix:$WORK/qmp.sock,server=on,wait=off" \
    -blockdev "driver=file,node-name=file0,filename=$WORK/vm.qcow2" -blockdev driver=qcow2,node-name=disk0,file=file0 \
    -device virtio-blk-pci,drive=disk0,id=vd0 -device virtio-serial-pci \
    -chardev "socket,path=$WORK/qga.sock,server=on,wait=off,id=qga0" \
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 &
QEMU=$!
trap 'kill $QEMU 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "guest: ready" "$WORK/serial.log" 2>/dev/null && break; sleep 0.5; done

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
cat "$WORK/vm.qcow2" >/dev/null
t0=$(now); b3sum "$WORK/vm.qcow2" >/dev/null; t1=$(now); T_B3=$(secs "$t0" "$t1")
t0=$(now); zstd -1 -T2 -q -c "$WORK/vm.qcow2" >/dev/null; t1=$(now); T_ZSTD=$(secs "$t0" "$t1")
MB=$(du -m --apparent-size "$WORK/vm.qcow2" | cut -f1)
echo "guest disk: 1 GiB qcow2, ${MB} MB allocated (${SIZE_MB} MiB random data); 2 cores, TCG guest"
printf '%-36s %7.2f s\n' "b3sum vm.qcow2" "$T_B3"
printf '%-36s %7.2f s\n' "zstd -1 -T2 vm.qcow2" "$T_ZSTD"
backup() { # mode -> "wall downtime frozen"
    local t0 t1 v
    t0=$(now)
    v=$("$HOARD" --store "$WORK/store-$1" backup-vm --json --qmp "$WORK/qmp.sock" --qga "$WORK/qga.sock" \
        --mode "$1" --id 100 --disk disk0=vda.img)
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin)["vm"]; print(v["downtime_secs"], v["frozen_secs"])')"
}
wait_running() {
    for _ in $(seq 120); do
        [ "$(grep -c 'guest: ready' "$WORK/serial.log")" -ge "$1" ] && return 0
        sleep 0.5
    done
}
boots=1
for mode in snapshot suspend stop; do
    "$HOARD" --store "$WORK/store-$mode" init >/dev/null
    read -r full down_f frozen_f <<<"$(backup "$mode")"
    [ "$mode" = stop ] && { boots=$((boots + 1)); wait_running "$boots"; }
    sleep 2
    read -r incr down_i frozen_i <<<"$(backup "$mode")"
    [ "$mode" = stop ] && { boots=$((boots + 1)); wait_running "$boots"; }
    printf '%-9s full %5.2f s (%.2f x b3sum, %.2f x zstd)  incremental %5.2f s  downtime %.3f / %.3f s  frozen %.3f / %.3f s\n' \
        "$mode" "$full" "$(echo "$T_B3 / $full" | bc -l)" "$(echo "$T_ZSTD / $full" | bc -l)" "$incr" \
        "$down_f" "$down_i" "$frozen_f" "$frozen_i"
done
