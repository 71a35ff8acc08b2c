#!/usr/bin/env bash
# What protection costs a tree backup: the same tree backed up into a plain,
# a sign and an encrypt store (each a new store every run), the three
# alternating so that the machine's noise hits them alike, best of $REPEAT,
# in one run. The protected stores cut with the keyed chunker and key their
# digests; encrypt also seals every new chunk.
#   big:  176 files of ~4.6 MiB, half text, half noise (the chunker's case:
#         every byte of a large file goes through it)
#   real: scripts/make-tree.sh (~2 GiB, ~100k files, mostly small)
# Baselines in the same run: `tar cf - | cat` and the plain store.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/keyed
REPEAT=${REPEAT:-3}
TREES=${TREES:-big real}
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
HOARD=$(realpath "$HOARD")
mkdir -p "$WORK"
export HOARD_STATE_DIR=$WORK/state
echo "bench passphrase" >"$WORK/pass"

make_big() { # DIR: 88 text files cut from a pool of real text, 88 of noise
    local dir=$1 i
    [ -d "$dir" ] && return
    mkdir -p "$dir"
    find /usr/share/doc /usr/share/man /usr/include -type f -size +2k 2>/dev/null |
        head -20000 | xargs cat 2>/dev/null | head -c $((96 << 20)) >"$WORK/text.pool" || true
    for i in $(seq 0 87); do
        # A different window of the pool per file (offsets coprime to
        # the chunk size), so the text files do not dedup among themselves.
        tail -c +$((i * 1048573 % (48 << 20) + 1)) "$WORK/text.pool" | head -c $((4600 * 1024)) >"$dir/text-$i" || true
        head -c $((4600 * 1024)) /dev/urandom >"$dir/noise-$i"
    done
    rm -f "$WORK/text.pool"
}

TIMEFORMAT='%R %U %S'
run() { # MODE SRC: prints "wall cpu"
    local store=$WORK/store-$1 line w u s
    rm -rf "$store" "$WORK/state"
    # A plain store refuses a passphrase: only protected ones get one.
    local key=()
    [ "$1" = none ] || key=(env HOARD_NEW_PASSWORD_FILE="$WORK/pass" HOARD_PASSWORD_FILE="$WORK/pass")
    "${key[@]}" "$HOARD" --store "$store" init --encryption "$1" --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null 2>&1
    sync
    line=$( { time "${key[@]}" "$HOARD" --store "$store" backup --kind ct --id 1 root.tree:"$2" >/dev/null 2>&1; } 2>&1 )
    read -r w u s <<<"$line"
    echo "$w $(echo "$u + $s" | bc -l)"
}

for tree in $TREES; do
    SRC=$WORK/$tree
    case $tree in
        big) make_big "$SRC" ;;
        real) scripts/make-tree.sh "$SRC" ;;
    esac
    BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)
    FILES=$(find "$SRC" -type f | wc -l)
    find "$SRC" -type f -print0 | xargs -0 cat >/dev/null
    declare -A best=()
    t_tar=""
    for _ in $(seq "$REPEAT"); do
        line=$( { time tar -cf - -C "$SRC" . | cat >/dev/null; } 2>&1 )
        w=${line%% *}
        if [ -z "$t_tar" ] || [ "$(echo "$w < $t_tar" | bc -l)" = 1 ]; then t_tar=$w; fi
        for mode in none sign encrypt; do
            r=$(run "$mode" "$SRC")
            if [ -z "${best[$mode]:-}" ] || [ "$(echo "${r%% *} < ${best[$mode]%% *}" | bc -l)" = 1 ]; then
                best[$mode]=$r
            fi
        done
    done
    echo "== $tree: $((BYTES >> 20)) MiB in $FILES files, best of $REPEAT, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-26s %7.2f s %6d MB/s\n' "tar cf - | cat" "$t_tar" "$(echo "$BYTES / 1000000 / $t_tar" | bc)"
    plain=${best[none]%% *}
    for mode in none sign encrypt; do
        w=${best[$mode]%% *} c=${best[$mode]##* }
        printf '%-26s %7.2f s %6d MB/s  cpu %6.2f s  vs plain %5.2fx\n' "backup, store $mode" "$w" \
            "$(echo "$BYTES / 1000000 / $w" | bc)" "$c" "$(echo "$plain / $w" | bc -l)"
    done
    unset best
done
rm -rf "$WORK"/store-* "$WORK/state"
