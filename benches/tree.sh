#!/usr/bin/env bash
# Tree archives on a ~2 GiB real tree (copies of /usr/share, /usr/include,
# /usr/bin and part of /usr/lib), page cache warm, best of $REPEAT, in one run:
#   tar -cf - DIR | zstd -1 -T2 >/dev/null   vs  first backup
#   incremental after changing 2% of the files (vs first backup's speed)
#   tar -xf of the same tree                  vs  full restore
# tar -x and restore each write into a fresh ext4 on a loop file (needs
# root): on a long-lived disk, ext4 inode allocation right after the
# previous run's rm -rf of 100k files took longer than the writes and
# varied threefold from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/tree
REPEAT=${REPEAT:-3}
# HOARD=BINARY measures that binary instead of building this tree's.
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
HOARD=$(realpath "$HOARD")
mkdir -p "$WORK"
SRC=$WORK/src
scripts/make-tree.sh "$SRC"
BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)
FILES=$(find "$SRC" -type f | wc -l)
tar -cf "$WORK/src.tar" -C "$SRC" .
cat "$WORK/src.tar" >/dev/null; find "$SRC" -type f -print0 | xargs -0 cat >/dev/null

FS=$WORK/fs.img MNT=$WORK/mnt
mkdir -p "$MNT"
fresh_fs() {
    umount "$MNT" 2>/dev/null || true
    rm -f "$FS"; truncate -s $((BYTES * 2 + (1 << 30))) "$FS"
    mkfs.ext4 -q -F "$FS"; mount -o loop "$FS" "$MNT"
}
trap 'umount "$MNT" 2>/dev/null || true; rm -f "$FS"' EXIT

now() { date +%s.%N; }
TIMEFORMAT='%R %U %S'
best() { # setup command...; prints "wall cpu" (user + system s) of the fastest run
    local best="" line w u y setup=$1
    shift
    for _ in $(seq "$REPEAT"); do
        $setup; sync
        line=$( { time "$@" >/dev/null 2>&1; } 2>&1 )
        read -r w u y <<<"$line"
        if [ -z "$best" ] || [ "$(echo "$w < ${best%% *}" | bc -l)" = 1 ]; then
            best="$w $(echo "$u + $y" | bc -l)"
        fi
    done
    echo "$best"
}
tarzstd() { tar -cf - -C "$SRC" . | zstd -1 -T2 -q >/dev/null; }
first() { rm -rf "$WORK/store"; "$HOARD" --store "$WORK/store" init >/dev/null; "$HOARD" --store "$WORK/store" backup --kind ct --id 1 root.tree:"$SRC"; }
untar() { mkdir "$MNT/untar"; tar -xf "$WORK/src.tar" -C "$MNT/untar"; }
restore() { "$HOARD" --store "$WORK/store" restore ct/1 root.tree "$MNT/restored"; }

T_TAR=$(best : tarzstd)
T_FIRST=$(best : first)
T_UNTAR=$(best fresh_fs untar)
T_RESTORE=$(best fresh_fs restore)
# 2% of the files get new contents, then the incremental (each repeat
# changes a fresh 2%, so every run has work to do).
change_2pct() {
    find "$SRC" -type f | awk -v s="$RANDOM" 'BEGIN{srand(s)} rand() < 0.02' | while read -r f; do
        printf 'changed %s\n' "$RANDOM" >>"$f" 2>/dev/null || true
    done
}
incremental() { "$HOARD" --store "$WORK/store" backup --kind ct --id 1 root.tree:"$SRC"; }
T_INC=$(best change_2pct incremental)
# The newest snapshot now points back into chunks of earlier ones.
T_RESTORE_INC=$(best fresh_fs restore)

mbs() { echo "scale=0; $BYTES / 1000000 / $1" | bc -l; }
row() { # label "wall cpu" [baseline-wall-over-this target]
    local w=${2%% *} c=${2##* }
    printf '%-34s %7.2f s %6s MB/s  cpu %6.2f s' "$1" "$w" "$(mbs "$w")" "$c"
    [ -n "${3:-}" ] && printf '  ratio %5.2f%s' "$3" "${4:+ (target >= $4)}"
    echo
}
ratio() { echo "${1%% *} / ${2%% *}" | bc -l; }
echo "tree: $FILES files, $BYTES bytes (2 cores; best of $REPEAT)"
row "tar -c | zstd -1 -T2" "$T_TAR"
row "hoard first backup" "$T_FIRST" "$(ratio "$T_TAR" "$T_FIRST")" 1
row "hoard incremental, 2% changed" "$T_INC" "$(ratio "$T_FIRST" "$T_INC")" 10
row "tar -x" "$T_UNTAR"
row "hoard restore" "$T_RESTORE" "$(ratio "$T_UNTAR" "$T_RESTORE")" 1
row "hoard restore, after incrementals" "$T_RESTORE_INC" "$(ratio "$T_UNTAR" "$T_RESTORE_INC")"
