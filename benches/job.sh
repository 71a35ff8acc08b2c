#!/usr/bin/env bash
# What a job costs over running its backups by hand, in one run, page cache
# warm, best of $REPEAT:
#   the 4 GiB e2e image: `hoard job run` vs `hoard backup`, first and unchanged
#   20 small trees: one job (max-workers 1 and 2) vs 20 `hoard backup` calls
#   --bwlimit: the rate a limited job reads at, against its limit
# The job's own work (a child per guest, locks, retention, the stored log)
# shows as the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-4096}
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
IMG=$WORK/disk-${SIZE_MB}M.img
mkdir -p "$WORK"
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
[ -s "$IMG" ] || scripts/make-image.sh "$IMG" "$SIZE_MB"
cat "$IMG" >/dev/null
B=$WORK/job-bench
rm -rf "$B"; mkdir -p "$B/jobs" "$B/run" "$B/trees"
export HOARD_JOBS_DIR=$B/jobs HOARD_RUN_DIR=$B/run
for i in $(seq 1 20); do
    mkdir -p "$B/trees/t$i"
    head -c 2000000 /dev/urandom >"$B/trees/t$i/data"
    for j in $(seq 1 20); do echo "file $j of tree $i" >"$B/trees/t$i/f$j"; done
done

now() { date +%s.%N; }
best() { sort -g | head -1; }
secs() { local t0; t0=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $t0" | bc -l; }

image_job() { printf 'store = "%s"\n%s\n[[images]]\nid = "img"\npath = "%s"\n' "$1" "$2" "$IMG" >"$B/jobs/$3.toml"; }

first_direct=() first_job=() again_direct=() again_job=()
for r in $(seq 1 "$REPEAT"); do
    rm -rf "$B/s1" "$B/s2"
    "$HOARD" --store "$B/s1" init >/dev/null; "$HOARD" --store "$B/s2" init >/dev/null
    image_job "$B/s2" "" img
    first_direct+=("$(secs "$HOARD" --store "$B/s1" backup --id img "disk.img:$IMG")")
    first_job+=("$(secs "$HOARD" job run img)")
    sleep 1
    again_direct+=("$(secs "$HOARD" --store "$B/s1" backup --id img "disk.img:$IMG")")
    again_job+=("$(secs "$HOARD" job run img)")
done

trees_direct=() trees_job1=() trees_job2=()
{
    echo "store = \"$B/s3\""
    echo "max-workers = 1"
    for i in $(seq 1 20); do printf '[[trees]]\nid = "t%s"\npath = "%s"\n' "$i" "$B/trees/t$i"; done
} >"$B/jobs/trees1.toml"
sed "s|max-workers = 1|max-workers = 2|; s|$B/s3|$B/s4|" "$B/jobs/trees1.toml" >"$B/jobs/trees2.toml"
all_trees() { for i in $(seq 1 20); do "$HOARD" --store "$B/s5" backup --id "t$i" "root.tree:$B/trees/t$i" || return 1; done; }
for r in $(seq 1 "$REPEAT"); do
    rm -rf "$B/s3" "$B/s4" "$B/s5"
    for s in s3 s4 s5; do "$HOARD" --store "$B/$s" init >/dev/null; done
    trees_direct+=("$(secs all_trees)")
    trees_job1+=("$(secs "$HOARD" job run trees1)")
    trees_job2+=("$(secs "$HOARD" job run trees2)")
done

LIMIT_MB=200
rm -rf "$B/s6"; "$HOARD" --store "$B/s6" init >/dev/null
image_job "$B/s6" "bwlimit = \"${LIMIT_MB}M\"" limited
"$HOARD" job check limited >/dev/null
limited=$(secs "$HOARD" job run limited)
# hoard reads only the allocated parts of the image (holes are zeros it
# does not read), so the limit applies to those bytes.
BYTES=$(du -B1 "$IMG" | cut -f1)

fd=$(printf '%s\n' "${first_direct[@]}" | best); fj=$(printf '%s\n' "${first_job[@]}" | best)
ad=$(printf '%s\n' "${again_direct[@]}" | best); aj=$(printf '%s\n' "${again_job[@]}" | best)
td=$(printf '%s\n' "${trees_direct[@]}" | best); t1=$(printf '%s\n' "${trees_job1[@]}" | best)
t2=$(printf '%s\n' "${trees_job2[@]}" | best)
rate=$(echo "$BYTES / 1048576 / $limited" | bc -l)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %9s %9s %8s\n' "step" "direct s" "job s" "job/dir"
printf '%-34s %9.2f %9.2f %8.3f\n' "4 GiB image, first backup" "$fd" "$fj" "$(echo "$fj / $fd" | bc -l)"
printf '%-34s %9.2f %9.2f %8.3f\n' "4 GiB image, unchanged" "$ad" "$aj" "$(echo "$aj / $ad" | bc -l)"
printf '%-34s %9.2f %9.2f %8.3f\n' "20 trees, max-workers 1" "$td" "$t1" "$(echo "$t1 / $td" | bc -l)"
printf '%-34s %9.2f %9.2f %8.3f\n' "20 trees, max-workers 2" "$td" "$t2" "$(echo "$t2 / $td" | bc -l)"
printf 'bwlimit %s MiB/s: read the %.0f MiB allocated at %.1f MiB/s (%.3f of the limit) in %.1f s\n' "$LIMIT_MB" "$(echo "$BYTES / 1048576" | bc -l)" "$rate" "$(echo "$rate / $LIMIT_MB" | bc -l)" "$limited"
rm -rf "$B"
