#!/usr/bin/env bash
# hoard through `hoard serve` against the same store on this host, in one
# run, on loopback with TLS (issue 31's benchmark):
#   first backup, restore and unchanged incremental of one image: remote
#   time / local time (each best of $REPEAT, alternating, a fresh store
#   for every first backup);
#   eight clients backing up eight different images at once: aggregate
#   MB/s against one client's;
#   the server's CPU seconds per GiB ingested (utime + stime of the
#   server process over the eight-client run) and its peak RSS (VmHWM).
# The image: $SIZE_MB MiB, half noise and half text-like (compresses).
# Baseline in the same run: `cat IMAGE >/dev/null` (page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}/serve
REPEAT=${REPEAT:-3}
SIZE_MB=${SIZE_MB:-1024}
CLIENT_MB=${CLIENT_MB:-256}
if [ -z "${HOARD:-}" ]; then
    cargo build --release -q -p hoard-cli
    HOARD=${CARGO_TARGET_DIR:-target}/release/hoard
fi
HOARD=$(realpath "$HOARD")
mkdir -p "$WORK"
export HOARD_STATE_DIR=$WORK/state HOARD_SERVER_DIR=$WORK/server

make_image() { # FILE MB SEED
    [ -f "$1" ] && return
    python3 - "$1" "$2" "$3" <<'EOF'
import os, random, sys
path, mb, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
with open(path, "wb") as f:
    for i in range(mb):
        if i % 2 == 0:
            f.write(os.urandom(1 << 20))
        else:
            text = b" ".join(rnd.choice(words) for _ in range(200_000))
            f.write((text * 2)[: 1 << 20])
EOF
}

IMG=$WORK/image
make_image "$IMG" "$SIZE_MB" 1
for i in $(seq 1 8); do make_image "$WORK/client-$i" "$CLIENT_MB" $((i + 1)); done

SERVER_PID=
start_server() { # STORE
    pkill -f "hoard.*serve --listen 127.0.0.1:18107" 2>/dev/null || true
    "$HOARD" --store "$1" serve --listen 127.0.0.1:18107 --cert-name localhost >"$WORK/serve.out" 2>"$WORK/serve.log" &
    SERVER_PID=$!
    for _ in $(seq 50); do grep -q fingerprint "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
    export HOARD_FINGERPRINT
    HOARD_FINGERPRINT=$(sed -n 's/^fingerprint //p' "$WORK/serve.out")
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

if [ ! -s "$WORK/admin.token" ]; then
    rm -rf "$HOARD_SERVER_DIR"
    "$HOARD" token create bench --role admin >"$WORK/admin.token" 2>/dev/null
fi
export HOARD_TOKEN
HOARD_TOKEN=$(cat "$WORK/admin.token")
REPO=https://127.0.0.1:18107

TIMEFORMAT=%R
secs() { { time "$@" >/dev/null 2>"$WORK/last.err"; } 2>&1; }
best() { sort -g | head -1; }

local_first=() remote_first=() local_inc=() remote_inc=() local_restore=() remote_restore=() cat_s=()
for r in $(seq "$REPEAT"); do
    cat_s+=("$(secs cat "$IMG")")
    rm -rf "$WORK/local" "$WORK/remote" "$WORK/state"
    "$HOARD" --store "$WORK/local" init >/dev/null
    "$HOARD" --store "$WORK/remote" init >/dev/null
    local_first+=("$(secs "$HOARD" --store "$WORK/local" backup --id img disk.img:"$IMG")")
    local_inc+=("$(secs "$HOARD" --store "$WORK/local" backup --id img disk.img:"$IMG")")
    rm -f "$WORK/out.img"
    local_restore+=("$(secs "$HOARD" --store "$WORK/local" restore host/img disk.img "$WORK/out.img")")
    start_server "$WORK/remote"
    remote_first+=("$(secs "$HOARD" --repo "$REPO" backup --id img disk.img:"$IMG")")
    remote_inc+=("$(secs "$HOARD" --repo "$REPO" backup --id img disk.img:"$IMG")")
    rm -f "$WORK/out.img"
    remote_restore+=("$(secs "$HOARD" --repo "$REPO" restore host/img disk.img "$WORK/out.img")")
    cmp "$IMG" "$WORK/out.img"
    stop_server
done
rm -f "$WORK/out.img"

b() { printf '%s\n' "$@" | best; }
LF=$(b "${local_first[@]}") RF=$(b "${remote_first[@]}")
LI=$(b "${local_inc[@]}") RI=$(b "${remote_inc[@]}")
LR=$(b "${local_restore[@]}") RR=$(b "${remote_restore[@]}")
CAT=$(b "${cat_s[@]}")
mbs() { echo "scale=1; $SIZE_MB / $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
echo "image ${SIZE_MB} MiB (half noise, half text); best of $REPEAT; cat: $(mbs "$CAT") MiB/s"
printf '%-22s %10s %10s %8s\n' "" "local" "remote" "remote/local (speed)"
printf '%-22s %8s/s %8s/s %8s\n' "first backup" "$(mbs "$LF")M" "$(mbs "$RF")M" "$(ratio "$LF" "$RF")"
printf '%-22s %8s/s %8s/s %8s\n' "unchanged incremental" "$(mbs "$LI")M" "$(mbs "$RI")M" "$(ratio "$LI" "$RI")"
printf '%-22s %8s/s %8s/s %8s\n' "restore" "$(mbs "$LR")M" "$(mbs "$RR")M" "$(ratio "$LR" "$RR")"

# Eight clients at once, against one.
rm -rf "$WORK/remote"
"$HOARD" --store "$WORK/remote" init >/dev/null
start_server "$WORK/remote"
ONE=$(secs "$HOARD" --repo "$REPO" backup --id one disk.img:"$WORK/client-1")
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
C0=$(cpu_of "$SERVER_PID")
start=$(date +%s.%N)
pids=()
for i in $(seq 1 8); do
    "$HOARD" --repo "$REPO" backup --id "node$i" disk.img:"$WORK/client-$i" >/dev/null 2>"$WORK/client-$i.err" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s.%N)
C1=$(cpu_of "$SERVER_PID")
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
stop_server
EIGHT=$(echo "$end - $start" | bc -l)
GIB=$(echo "8 * $CLIENT_MB / 1024" | bc -l)
printf 'one client:    %6.1f MiB/s\n' "$(echo "$CLIENT_MB / $ONE" | bc -l)"
printf 'eight clients: %6.1f MiB/s aggregate (%.2f x one client)\n' \
    "$(echo "8 * $CLIENT_MB / $EIGHT" | bc -l)" "$(echo "(8 * $CLIENT_MB / $EIGHT) / ($CLIENT_MB / $ONE)" | bc -l)"
printf 'server CPU:    %6.2f s per GiB ingested\n' "$(echo "($C1 - $C0) / $TICKS / $GIB" | bc -l)"
printf 'server peak RSS: %d MiB with eight clients\n' $((RSS / 1024))
