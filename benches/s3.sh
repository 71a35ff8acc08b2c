#!/usr/bin/env bash
# A store in SeaweedFS on loopback against a local store, in one run, on
# the same 4 GiB image as benches/e2e.sh and the same tree as
# benches/tree.sh, page cache warm, best of $REPEAT:
#   first backup to S3      vs first backup to a local store (issue: >= 0.8)
#   restore from S3         vs restore from a local store   (issue: >= 0.7)
#   unchanged backup, tree backup, a deleted cache rebuilt
# with the CPU seconds of hoard and of the server in each step (both share
# this machine's cores), the same packs PUT and GET by curl as the server's
# own baseline, and the requests each S3 step sent (HOARD_S3_STATS) per GiB
# stored, next to what one object per 4 MiB and per 64 KiB chunk would need.
# SeaweedFS keeps its volumes in $BENCH_DIR, on the same disk as the local
# store.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-4096}
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
IMG=$WORK/disk-${SIZE_MB}M.img
TREE=$WORK/tree/src
WEED=${WEED:-/var/cache/hoard/seaweedfs/bin/weed}
mkdir -p "$WORK"
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
[ -x "$WEED" ] || scripts/seaweedfs.sh
[ -s "$IMG" ] || scripts/make-image.sh "$IMG" "$SIZE_MB"
scripts/make-tree.sh "$TREE"
BYTES=$(stat -c %s "$IMG")
TBYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
cat "$IMG" >/dev/null; cat "$IMG" >/dev/null

SW=$WORK/seaweed
rm -rf "$SW"; mkdir -p "$SW/data"
AK=AKBENCH SK=SKBENCH
echo "{\"identities\":[{\"name\":\"bench\",\"credentials\":[{\"accessKey\":\"$AK\",\"secretKey\":\"$SK\"}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\"]}]}" >"$SW/s3.json"
setsid "$WEED" server -dir="$SW/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=29333 \
    -volume.port=28080 -filer.port=28888 -s3 -s3.port=28333 -s3.port.iceberg=0 \
    -s3.port.lance=0 -volume.max=64 -s3.config="$SW/s3.json" >"$SW/weed.log" 2>&1 </dev/null &
WEED_PID=$!
trap 'kill $WEED_PID 2>/dev/null; wait $WEED_PID 2>/dev/null || true' EXIT
until (exec 3<>/dev/tcp/127.0.0.1/28333) 2>/dev/null; do sleep 0.2; done
until echo "s3.bucket.create -name bench" | timeout 10 "$WEED" shell -master=127.0.0.1:29333 2>&1 | grep -q "created bucket"; do sleep 0.5; done
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK HOARD_S3_STATS=1
ENDPOINT=http://127.0.0.1:28333/bench

LOCAL=$WORK/store-local
CACHE=$WORK/s3-cache
RESTORED=$WORK/restored.img
RUN=0
url() { echo "$ENDPOINT/run-$RUN"; }
fresh_local() { rm -rf "$LOCAL"; "$HOARD" --store "$LOCAL" init >/dev/null; }
# A new prefix each time: a store's prefix must be empty at init.
fresh_s3() { RUN=$((RUN + 1)); rm -rf "$CACHE"; "$HOARD" --store "$(url)" --cache-dir "$CACHE" init >/dev/null 2>&1; }
no_restored() { rm -f "$RESTORED"; }
s3() { "$HOARD" --store "$(url)" --cache-dir "$CACHE" "$@"; }
server_ticks() { awk '{print $14 + $15}' "/proc/$WEED_PID/stat"; }
TICK=$(getconf CLK_TCK)
TIMEFORMAT='%R %U %S' # bash's time: wall, then the CPU of the command and its children

# measure NAME BEFORE COMMAND...: the fastest of $REPEAT runs, its CPU
# seconds (the command's, the server's) and its S3 requests.
declare -A SECS CPU SRV REQ
measure() {
    local best="" w u y c0 c1
    for _ in $(seq "$REPEAT"); do
        $2
        sync
        c0=$(server_ticks)
        { time "${@:3}" >/dev/null 2>"$WORK/s3-step.err"; } 2>"$WORK/s3-step.time"
        c1=$(server_ticks)
        read -r w u y <"$WORK/s3-step.time"
        if [ -z "$best" ] || [ "$(echo "$w < $best" | bc -l)" = 1 ]; then
            best=$w
            CPU[$1]=$(echo "$u + $y" | bc -l)
            SRV[$1]=$(echo "scale=2; ($c1 - $c0) / $TICK" | bc -l)
            REQ[$1]=$(grep -o 's3 requests {.*}' "$WORK/s3-step.err" | tail -1 | cut -d' ' -f3- || true)
        fi
    done
    SECS[$1]=$best
}

measure local_first  fresh_local "$HOARD" --store "$LOCAL" backup --id bench "disk.img:$IMG"
measure s3_first     fresh_s3    s3 backup --id bench "disk.img:$IMG"
measure local_unch   true        "$HOARD" --store "$LOCAL" backup --id bench "disk.img:$IMG"
measure s3_unch      true        s3 backup --id bench "disk.img:$IMG"
measure local_rest   no_restored "$HOARD" --store "$LOCAL" restore host/bench disk.img "$RESTORED"
measure s3_rest      no_restored s3 restore host/bench disk.img "$RESTORED"
cmp "$IMG" "$RESTORED"
rm -f "$RESTORED"
measure s3_recache   "rm -rf $CACHE" s3 snapshots

# The server's own baseline: the local store's packs PUT one after another
# and GET four at a time by curl (SigV4, payload unsigned).
STORED=$(du -sb --apparent-size "$LOCAL/packs" | cut -f1)
PACKS=$(find "$LOCAL/packs" -name '*.pack')
CURL=(curl -sSf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AK:$SK" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
put_packs() { for p in $PACKS; do "${CURL[@]}" -X PUT --data-binary "@$p" "$ENDPOINT/curl/$RUN/${p##*/}" -o /dev/null; done; }
get_packs() { for p in $PACKS; do echo "$ENDPOINT/curl/$RUN/${p##*/}"; done | xargs -P 4 -n 1 "${CURL[@]}" -o /dev/null; }
next_prefix() { RUN=$((RUN + 1)); }
measure curl_put next_prefix put_packs
measure curl_get true        get_packs

find "$TREE" -type f -print0 | xargs -0 cat >/dev/null
measure local_tree fresh_local "$HOARD" --store "$LOCAL" backup --kind ct --id t "root.tree:$TREE"
measure s3_tree    fresh_s3    s3 backup --kind ct --id t "root.tree:$TREE"

mbs() { echo "scale=0; $1 / ${SECS[$2]} / 1000000" | bc -l; }
ratio() { echo "scale=2; ${SECS[$2]} / ${SECS[$1]}" | bc -l; }
echo "image: $((BYTES >> 20)) MiB, stored as $((STORED >> 20)) MiB of packs; tree: $((TBYTES >> 20)) MiB; best of $REPEAT"
echo "SeaweedFS $("$WEED" version 2>/dev/null | head -1) on loopback, on the same $(nproc) cores"
printf '%-18s %9s %9s %8s %10s %10s %10s  %s\n' step local_MB/s s3_MB/s s3/local local_cpu_s s3_cpu_s server_cpu "s3 requests"
row() { # LABEL BYTES LOCAL S3
    printf '%-18s %9s %9s %8s %10s %10s %10s  %s\n' "$1" "$(mbs "$2" "$3")" "$(mbs "$2" "$4")" \
        "$(ratio "$4" "$3")" "${CPU[$3]}" "${CPU[$4]}" "${SRV[$4]}" "${REQ[$4]}"
}
row "first backup" "$BYTES" local_first s3_first
row "unchanged backup" "$BYTES" local_unch s3_unch
row "restore" "$BYTES" local_rest s3_rest
row "tree first backup" "$TBYTES" local_tree s3_tree
echo "curl, the same packs: PUT one at a time $(mbs "$STORED" curl_put) MB/s of packs (server CPU ${SRV[curl_put]} s), GET 4 at a time $(mbs "$STORED" curl_get) MB/s (server CPU ${SRV[curl_get]} s)"
echo "cache deleted, then 'snapshots': ${SECS[s3_recache]} s, requests ${REQ[s3_recache]}"
per_gib() { python3 -c "import json,sys; r=json.loads(sys.argv[1] or '{}'); g=$STORED/2**30; print(', '.join(f'{k} {v/g:.1f}' for k,v in r.items() if v))" "$1"; }
echo "requests per GiB stored: first backup: $(per_gib "${REQ[s3_first]}"); restore: $(per_gib "${REQ[s3_rest]}")"
echo "one object per chunk would need per GiB: 256 PUTs (4 MiB chunks) or 16384 PUTs (64 KiB chunks) to back up, as many GETs to restore"
