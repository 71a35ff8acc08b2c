#!/usr/bin/env bash
# Container backup modes on a real LXC container (busybox template) whose
# root file system is a btrfs subvolume on a loop file, holding SIZE_MB
# (default 1200) MiB: a copy of part of /usr plus random data; its init
# appends a line to a log every 5 ms. Per mode (its own store, so each
# starts with a full read into an empty store): downtime or frozen time,
# and wall time of the first backup and of a second one 2 s later, next to
# `tar -cf - ROOTFS | zstd -1 -T2` of the same tree in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1200}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/ct
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
NAME=hoard-bench-$$
LXC=$WORK/lxc
cleanup() {
    lxc-stop -P "$LXC" -n "$NAME" -k >/dev/null 2>&1 || true
    lxc-destroy -P "$LXC" -n "$NAME" -f >/dev/null 2>&1 || true
    umount "$LXC" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$LXC"
truncate -s $((SIZE_MB * 3))M "$WORK/btrfs.img"
mkfs.btrfs -q -f "$WORK/btrfs.img"
mount -o loop "$WORK/btrfs.img" "$LXC"
printf 'lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n' >"$WORK/default.conf"
lxc-create -P "$LXC" -n "$NAME" -t busybox -B btrfs -f "$WORK/default.conf" >/dev/null
ROOT=$LXC/$NAME/rootfs
cat >>"$ROOT/etc/init.d/rcS" <<'EOF'
n=0; (while :; do n=$((n + 1)); echo "line $n" >>/root/log.txt; usleep 5000; done) &
EOF
mkdir -p "$ROOT/srv"
cp -a /usr/share "$ROOT/srv/" 2>/dev/null || true
have=$(du -sm "$ROOT" | cut -f1)
[ "$have" -lt "$SIZE_MB" ] && head -c $(((SIZE_MB - have) << 20)) /dev/urandom >"$ROOT/srv/random.bin"
lxc-start -P "$LXC" -n "$NAME"
sleep 1
BYTES=$(du -sb --apparent-size "$ROOT" | cut -f1)
FILES=$(find "$ROOT" -type f | wc -l)

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
tar -cf - -C "$ROOT" . >/dev/null
t0=$(now); tar -cf - -C "$ROOT" . | zstd -1 -T2 -q >/dev/null; t1=$(now); T_TAR=$(secs "$t0" "$t1")
echo "container: $FILES files, $BYTES bytes, rootfs a btrfs subvolume; 2 cores"
printf '%-40s %7.2f s\n' "tar -cf - ROOTFS | zstd -1 -T2" "$T_TAR"
backup() { # store mode [args] -> "wall downtime frozen first_pass"
    local store=$1 mode=$2 t0 t1 v
    shift 2
    t0=$(now)
    v=$("$HOARD" --store "$store" backup-ct --json --name "$NAME" --lxcpath "$LXC" --mode "$mode" "$@")
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(echo "$v" | python3 -c 'import json,sys; c=json.load(sys.stdin)["ct"]; print(c["downtime_secs"], c["frozen_secs"], c["first_pass_secs"])')"
}
run() { # label mode [args]
    local label=$1 store
    shift
    store=$WORK/store-${label//[ -]/_}
    "$HOARD" --store "$store" init >/dev/null
    read -r full down frozen firstp <<<"$(backup "$store" "$@")"
    sleep 2
    read -r again down2 frozen2 firstp2 <<<"$(backup "$store" "$@")"
    printf '%-18s first %6.2f s (%.2f x tar|zstd)  again %5.2f s  down %.2f / %.2f s  frozen %.3f / %.3f s  first pass %.2f / %.2f s\n' \
        "$label" "$full" "$(echo "$T_TAR / $full" | bc -l)" "$again" "$down" "$down2" "$frozen" "$frozen2" "$firstp" "$firstp2"
}
run stop stop
run suspend suspend
run "suspend --tmpdir" suspend --tmpdir "$WORK/tmpdir"
run snapshot snapshot
