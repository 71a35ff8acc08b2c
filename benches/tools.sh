#!/usr/bin/env bash
# hoard beside restic, borg and casync (Debian's packages) on the same data,
# every step cache-cold, in one run:
#
#   image: a 4 GiB sparse ext4 image of real files (scripts/make-image.sh);
#          day 2 adds 100 MB of files and overwrites 5% of the image with
#          random data, once in scattered 64 KiB writes, once in 1 MiB runs
#   tree:  ~2 GB of /usr and /etc; day 2 changes 2% of the files
#
# Steps per tool: image first backup, day-2 scattered, day-2 clustered,
# restore of day 1 (compared byte for byte, allocation recorded); tree first
# backup, day 2 (in place), restore of day 1. Baselines in the same run:
# cold `cat` of the image, cold `cp --sparse=always`, warm `zstd -1 -T2`,
# cold `tar -cf - | cat`, warm `tar -cf - | zstd -1 -T2`, cold `tar -x`, and
# hoard's own first backups warm, and a cold `cp` right before each hoard
# image restore. Each row: wall, user and system time, peak RSS, and how
# much the repository grew. Restores go to a fresh ext4 on a loop file and
# are timed until their data is on the disk (a sync inside the timing, for
# the tools and for cp and tar -x); one repository is on disk at a time
# (about 25 GB free needed). About 25 minutes with all five tools on 2
# cores (23 once the data is built; it is kept in $BENCH_DIR/tools),
# casync the slowest.
#
#   benches/tools.sh                      all tools
#   TOOLS="hoard hoard-4M" benches/tools.sh
#   HOARD=BINARY benches/tools.sh         that binary instead of this tree's
#
# Writes $BENCH_DIR/tools/results.csv and prints a table. Needs root (page
# cache drops, loop mounts); installs restic, borg and casync if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${BENCH_DIR:-/var/tmp/hoard-bench}/tools
TOOLS=${TOOLS:-hoard hoard-4M restic borg casync}   # hoard-SIZE: a store of that chunk size
mkdir -p "$W"
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
HOARD=$(realpath "$HOARD")
need=()
for t in $TOOLS; do
    case $t in
    restic) command -v restic >/dev/null || need+=(restic) ;;
    borg) command -v borg >/dev/null || need+=(borgbackup) ;;
    casync) command -v casync >/dev/null || need+=(casync) ;;
    esac
done
command -v b3sum >/dev/null || need+=(b3sum)
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null

# ---- data (built once, deterministic for a given machine's /usr) ----
IMG1=$W/day1.img IMG2S=$W/day2-scattered.img IMG2C=$W/day2-clustered.img
TREE1=$W/tree1 MNT=$W/mnt
mkdir -p "$MNT"
cleanup() { umount "$MNT" 2>/dev/null || true; }
trap cleanup EXIT
overwrite() { # IMAGE RUN_BYTES SEED: random data over 5% of IMAGE in runs
    python3 - "$1" "$2" "$3" <<'EOF'
import os, random, sys
path, run, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = os.path.getsize(path)
r = random.Random(seed)
slots = r.sample(range(size // run), size // 20 // run)
with open(path, "r+b") as f:
    for s in sorted(slots):
        f.seek(s * run)
        f.write(r.randbytes(run))
EOF
}
if [ ! -s "$IMG2C" ]; then
    [ -s "$IMG1" ] || scripts/make-image.sh "$IMG1" 4096
    cp --sparse=always "$IMG1" "$W/day2.img"
    mount -o loop "$W/day2.img" "$MNT"
    mkdir -p "$MNT/day2"
    for i in $(seq 100); do # 100 MB: text (compressible) and random halves
        seq $((i * 100000)) $((i * 100000 + 70000)) >"$MNT/day2/t$i"
        python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($i).randbytes(500000))" >"$MNT/day2/r$i"
    done
    umount "$MNT"
    cp --sparse=always "$W/day2.img" "$IMG2S"
    overwrite "$IMG2S" 65536 1
    mv "$W/day2.img" "$IMG2C"
    overwrite "$IMG2C" 1048576 2
fi
if [ ! -d "$TREE1" ]; then
    mkdir -p "$W/tree1.tmp/usr/lib"
    cp -a /etc /usr/share /usr/include /usr/bin "$W/tree1.tmp/" 2>/dev/null || true
    for d in /usr/lib/*/; do
        [ "$(du -s "$W/tree1.tmp" | cut -f1)" -gt $((2100 * 1024)) ] && break
        cp -a "$d" "$W/tree1.tmp/usr/lib/" 2>/dev/null || true
    done
    mv "$W/tree1.tmp" "$TREE1"
fi
IMG_BYTES=$(stat -c %s "$IMG1")
TREE_BYTES=$(du -sb --apparent-size "$TREE1" | cut -f1)

# ---- measuring ----
CSV=$W/results.csv
echo "tool,step,wall_s,user_s,sys_s,max_rss_mib,repo_mib,growth_mib" >"$CSV"
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
warm_img() { cat "$1" >/dev/null; cat "$1" >/dev/null; }
REPO_BEFORE=0
repo_size() { if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }
run() { # TOOL STEP REPO CACHE(cold|warm) COMMAND...: one timed row
    local tool=$1 step=$2 repo=$3 cache=$4 out
    shift 4
    # Warm runs sync too: the previous step's write-back (a restore, tar -x)
    # must not land in this one.
    if [ "$cache" = cold ]; then cold; else sync; fi
    local before
    before=$(repo_size "$repo")
    # bash -c: the tools are shell functions (exported below).
    out=$(/usr/bin/time -f '%e %U %S %M' bash -c '"$@"' _ "$@" 2>&1 >/dev/null | tail -1) || {
        echo "FAILED: $tool $step: $*" >&2
        "$@" >&2 || true
        exit 1
    }
    read -r wall user sys rss <<<"$out"
    sync
    local after
    after=$(repo_size "$repo")
    printf '%s,%s,%s,%s,%s,%d,%d,%d\n' "$tool" "$step" "$wall" "$user" "$sys" $((rss / 1024)) \
        $((after / 1048576)) $(((after - before) / 1048576)) >>"$CSV"
    printf '%-9s %-22s %7.2f s  user %6.2f  sys %6.2f  rss %5d MiB  repo %6d MiB\n' \
        "$tool" "$step" "$wall" "$user" "$sys" $((rss / 1024)) $((after / 1048576)) >&2
}
sh_c() { sh -c "$1"; }
# A restore is done when its data is on the disk: hoard fsyncs what it
# restored, cp and tar do not, so every restore row is timed with a sync.
durably() { "$@" && sync; }
fresh_fs() { # a fresh ext4 on a loop file at $MNT for restores
    umount "$MNT" 2>/dev/null || true
    rm -f "$W/fs.img"
    truncate -s $((IMG_BYTES + TREE_BYTES * 2 + (2 << 30))) "$W/fs.img"
    mkfs.ext4 -q -F "$W/fs.img"
    mount -o loop "$W/fs.img" "$MNT"
}

# ---- the tools: init REPO; backup REPO NAME PATH; restore REPO NAME OUT ----
# Every tool reads its input under the same path on every day ($IN/...),
# so that the ones that find unchanged files by path (restic, borg) can.
IN=$W/in
hoard_init() { # hoard: the store's default chunk size; hoard-SIZE: that size
    case $1 in
    hoard-*) "$HOARD" --store "$2" init --chunk-size "${1#hoard-}" ;;
    *) "$HOARD" --store "$2" init ;;
    esac
}
hoard_backup() { # REPO NAME PATH
    case $2 in
    img*) "$HOARD" --store "$1" backup --id img "disk.img:$3" ;;
    tree*) "$HOARD" --store "$1" backup --kind ct --id tree "root.tree:$3" ;;
    esac
}
hoard_restore() { # REPO NAME OUT: the first snapshot of the kind
    case $2 in
    img*) "$HOARD" --store "$1" restore "$("$HOARD" --store "$1" snapshots | grep '/img/' | head -1 | awk '{print $1}')" disk.img "$3/disk.img" ;;
    tree*) "$HOARD" --store "$1" restore "$("$HOARD" --store "$1" snapshots | grep '/tree/' | head -1 | awk '{print $1}')" root.tree "$3/tree" ;;
    esac
}
restic_env() { export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$1 RESTIC_CACHE_DIR=$1.cache; }
restic_init() { restic_env "$2"; rm -rf "$2.cache"; restic init -q --repository-version 2; }
restic_backup() { restic_env "$1"; restic backup -q --host bench --tag "$2" "$3"; }
restic_restore() {
    restic_env "$1"
    local sparse="" id
    restic restore --help | grep -q -- --sparse && sparse=--sparse
    id=$(restic snapshots --json --tag "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["short_id"])')
    restic restore -q $sparse "$id" --target "$3"
}
borg_env() { export BORG_REPO=$1 BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$1.base; }
borg_init() { borg_env "$2"; rm -rf "$2.base"; borg init -e none; }
borg_backup() { borg_env "$1"; (cd "$(dirname "$3")" && borg create "::$2" "$(basename "$3")"); }
borg_restore() { borg_env "$1"; (cd "$3" && borg extract --sparse "::$2"); }
casync_init() { mkdir -p "$2"; }
casync_backup() { # a blob index for a file, a directory index for a tree
    if [ -d "$3" ]; then casync make --store="$1/store" "$1/$2.caidx" "$3"; else casync make --store="$1/store" "$1/$2.caibx" "$3"; fi
}
casync_restore() {
    if [ -e "$1/$2.caidx" ]; then casync extract --store="$1/store" "$1/$2.caidx" "$3/tree"; else casync extract --store="$1/store" "$1/$2.caibx" "$3/disk.img"; fi
}
tool_fn() { case $1 in hoard*) echo hoard ;; *) echo "$1" ;; esac; }
init() { "$(tool_fn "$1")_init" "$1" "$2" >/dev/null; }
backup() { "$(tool_fn "$1")_backup" "${@:2}"; }
restore() { "$(tool_fn "$1")_restore" "${@:2}"; }
export HOARD
export -f sh_c durably tool_fn backup restore hoard_backup hoard_restore restic_env restic_backup restic_restore \
    borg_env borg_backup borg_restore casync_backup casync_restore

# ---- baselines ----
run base "cat image" "" cold sh_c "cat '$IMG1'"
fresh_fs
run base "cp --sparse=always" "" cold durably cp --sparse=always "$IMG1" "$MNT/cp.img"
ALLOC_CP=$(du -sB1 "$MNT/cp.img" | cut -f1)
warm_img "$IMG1"
run base "zstd -1 -T2 (warm)" "" warm sh_c "zstd -1 -T2 -q -c '$IMG1'"
run base "tar | cat" "" cold sh_c "tar -cf - -C '$TREE1' . | cat"
run base "tar | zstd -1 -T2 (warm)" "" warm sh_c "tar -cf - -C '$TREE1' . | zstd -1 -T2 -q"
tar -cf "$W/tree1.tar" -C "$TREE1" .
fresh_fs
mkdir "$MNT/untar"
run base "tar -x" "" cold durably tar -xf "$W/tree1.tar" -C "$MNT/untar"
rm -f "$W/tree1.tar"

# ---- images ----
rm -rf "$IN"
mkdir -p "$IN"
for tool in $TOOLS; do
    R=$W/repo-$tool
    rm -rf "$R" "$R".*
    if [ "$(tool_fn "$tool")" = hoard ]; then
        init "$tool" "$R"
        warm_img "$IMG1"
        run "$tool" "image first (warm)" "$R" warm backup "$tool" "$R" img0 "$IMG1"
        rm -rf "$R"
    fi
    init "$tool" "$R"
    ln -f "$IMG1" "$IN/disk.img"
    run "$tool" "image first" "$R" cold backup "$tool" "$R" img1 "$IN/disk.img"
    ln -f "$IMG2S" "$IN/disk.img"
    run "$tool" "image day2 scattered" "$R" cold backup "$tool" "$R" img2s "$IN/disk.img"
    ln -f "$IMG2C" "$IN/disk.img"
    run "$tool" "image day2 clustered" "$R" cold backup "$tool" "$R" img2c "$IN/disk.img"
    if [ "$(tool_fn "$tool")" = hoard ]; then
        # The disk's speed drifts within minutes: a baseline right beside it.
        fresh_fs
        run base "cp --sparse=always (beside $tool)" "" cold durably cp --sparse=always "$IMG1" "$MNT/cp.img"
    fi
    fresh_fs
    mkdir -p "$MNT/out"
    run "$tool" "image restore" "$R" cold durably restore "$tool" "$R" img1 "$MNT/out"
    out=$(find "$MNT/out" -name disk.img -type f | head -1)
    cmp "$IMG1" "$out" || { echo "RESTORE MISMATCH: $tool" >&2; exit 1; }
    echo "$tool,image restore allocated,,,,,$(($(du -sB1 "$out" | cut -f1) / 1048576)),cp: $((ALLOC_CP / 1048576))" >>"$CSV"
    rm -rf "$R" "$R".* "$MNT/out"  # the disk holds one repository at a time
done

# ---- trees: day 1 for every tool, then 2% changed in place, then day 2 ----
rm -rf "$IN"
mkdir -p "$IN"
cp -a "$TREE1" "$IN/tree"
for tool in $TOOLS; do
    R=$W/repo-$tool
    init "$tool" "$R"
    if [ "$(tool_fn "$tool")" = hoard ]; then
        init "$tool" "$R.warm"
        tar -cf - -C "$TREE1" . | cat >/dev/null
        run "$tool" "tree first (warm)" "$R.warm" warm backup "$tool" "$R.warm" tree0 "$TREE1"
        rm -rf "$R.warm"
    fi
    run "$tool" "tree first" "$R" cold backup "$tool" "$R" tree1 "$IN/tree"
done
(cd "$IN/tree" && find . -type f | LC_ALL=C sort | awk 'NR % 50 == 0') | while read -r f; do
    printf 'day 2 %s\n' "$f" >>"$IN/tree/$f"
done
for tool in $TOOLS; do
    R=$W/repo-$tool
    run "$tool" "tree day2" "$R" cold backup "$tool" "$R" tree2 "$IN/tree"
done
for tool in $TOOLS; do
    R=$W/repo-$tool
    fresh_fs
    mkdir -p "$MNT/out"
    run "$tool" "tree restore" "$R" cold durably restore "$tool" "$R" tree1 "$MNT/out"
    rm -rf "$R" "$R".*
done
umount "$MNT"
rm -rf "$IN" "$W/fs.img"

# ---- the table ----
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); image $((IMG_BYTES >> 20)) MiB, tree $((TREE_BYTES >> 20)) MiB"
column -s, -t "$CSV"
