#!/usr/bin/env bash
# Tree archives on a ~2 GiB real tree (copies of /usr/share, /usr/include,
# /usr/bin and part of /usr/lib), page cache warm, best of $REPEAT, in one run:
#   tar -cf - DIR | zstd -1 -T2 >/dev/null   vs  first backup
#   incremental after changing 2% of the files (vs first backup's speed)
#   tar -xf of the same tree                  vs  full restore
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/tree
REPEAT=${REPEAT:-3}
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
mkdir -p "$WORK"
SRC=$WORK/src
if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC"
    cp -a /usr/share /usr/include /usr/bin "$SRC/"
    mkdir -p "$SRC/lib"
    for d in /usr/lib/*/; do
        [ "$(du -s "$SRC" | cut -f1)" -gt $((2 * 1024 * 1024)) ] && break
        cp -a "$d" "$SRC/lib/" 2>/dev/null || true
    done
fi
BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)
FILES=$(find "$SRC" -type f | wc -l)
tar -cf "$WORK/src.tar" -C "$SRC" .
cat "$WORK/src.tar" >/dev/null; find "$SRC" -type f -print0 | xargs -0 cat >/dev/null

now() { date +%s.%N; }
best() { # command...; prints the best wall time
    local best="" t0 t1 s
    for _ in $(seq "$REPEAT"); do
        t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
        s=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
    done
    echo "$best"
}
tarzstd() { tar -cf - -C "$SRC" . | zstd -1 -T2 -q >/dev/null; }
first() { rm -rf "$WORK/store"; "$HOARD" --store "$WORK/store" init >/dev/null; "$HOARD" --store "$WORK/store" backup --kind ct --id 1 root.tree:"$SRC"; }
untar() { rm -rf "$WORK/untar"; mkdir "$WORK/untar"; tar -xf "$WORK/src.tar" -C "$WORK/untar"; }
restore() { rm -rf "$WORK/restored"; "$HOARD" --store "$WORK/store" restore ct/1 root.tree "$WORK/restored"; }

T_TAR=$(best tarzstd)
T_FIRST=$(best first)
T_UNTAR=$(best untar)
T_RESTORE=$(best restore)
# 2% of the files get new contents, then the incremental (each repeat
# changes a fresh 2%, so every run has work to do).
incremental() {
    find "$SRC" -type f | awk -v s="$RANDOM" 'BEGIN{srand(s)} rand() < 0.02' | while read -r f; do
        printf 'changed %s\n' "$RANDOM" >>"$f" 2>/dev/null || true
    done
    t0=$(now); "$HOARD" --store "$WORK/store" backup --kind ct --id 1 root.tree:"$SRC" >/dev/null 2>&1; t1=$(now)
    echo "$t1 - $t0" | bc -l
}
T_INC=$(for _ in $(seq "$REPEAT"); do incremental; done | sort -n | head -1)
mbs() { echo "scale=0; $BYTES / 1000000 / $1" | bc -l; }
echo "tree: $FILES files, $BYTES bytes (2 cores; best of $REPEAT)"
printf '%-34s %7.2f s %6s MB/s\n' "tar -c | zstd -1 -T2" "$T_TAR" "$(mbs "$T_TAR")"
printf '%-34s %7.2f s %6s MB/s  ratio %.2f (target >= 1)\n' "hoard first backup" "$T_FIRST" "$(mbs "$T_FIRST")" "$(echo "$T_TAR / $T_FIRST" | bc -l)"
printf '%-34s %7.2f s %6s MB/s  ratio %.2f (target >= 10)\n' "hoard incremental, 2% changed" "$T_INC" "$(mbs "$T_INC")" "$(echo "$T_FIRST / $T_INC" | bc -l)"
printf '%-34s %7.2f s %6s MB/s\n' "tar -x" "$T_UNTAR" "$(mbs "$T_UNTAR")"
printf '%-34s %7.2f s %6s MB/s  ratio %.2f (target >= 1)\n' "hoard restore" "$T_RESTORE" "$(mbs "$T_RESTORE")" "$(echo "$T_UNTAR / $T_RESTORE" | bc -l)"
