#!/usr/bin/env bash
# What the safety rules of index rebuild, GC and export cost, page cache
# warm, best of $REPEAT, every figure next to a baseline of the same run:
#   1. `hoard index rebuild` (every record checked in full before it is
#      indexed) and `hoard check` against `b3sum --num-threads 2` over the
#      same packs, and against the rebuild of $OLD_HOARD (a build of the
#      previous version, which indexed headers only), if given;
#   2. `hoard gc` on the same store with its index lost, the worst case of
#      "walk a pack before deleting it": every pack is walked (and kept);
#   3. `nbdcopy` of `hoard export` over TLS against the same export over
#      plain TCP (--insecure-tcp).
#
#   benches/repair.sh                               4 GiB ext4 image (scripts/make-image.sh)
#   SIZE_MB=1024 OLD_HOARD=/path/to/old/hoard benches/repair.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-4096}
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/hoard-bench}
IMG=$WORK/disk-${SIZE_MB}M.img
mkdir -p "$WORK"
cargo build --release -q -p hoard-cli
HOARD=$(realpath "${CARGO_TARGET_DIR:-target}/release/hoard")
[ -s "$IMG" ] || scripts/make-image.sh "$IMG" "$SIZE_MB"
STORE=$WORK/repair-store
rm -rf "$STORE"; "$HOARD" --store "$STORE" init >/dev/null
"$HOARD" --store "$STORE" backup --id bench "disk.img:$IMG" >/dev/null

best() {
    local best="" s t0 t1
    for _ in $(seq "$REPEAT"); do
        t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s.%N)
        s=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
    done
    echo "$best"
}
row() { # LABEL SECONDS BASELINE-SECONDS
    printf '%-44s %7.2f s  %5s MB/s of packs  %5.2fx the baseline\n' "$1" "$2" \
        "$(echo "scale=0; $PACK_BYTES / 1000000 / $2" | bc -l)" "$(echo "scale=4; $3 / $2" | bc -l)"
}

mapfile -t PACKS < <(find "$STORE/packs" -name '*.pack')
PACK_BYTES=$(du -cb "${PACKS[@]}" | tail -1 | cut -f1)
cat "${PACKS[@]}" >/dev/null
echo "== $SIZE_MB MiB image: ${#PACKS[@]} packs, $PACK_BYTES bytes ($(nproc) cores)"
B3=$(best b3sum --num-threads 2 "${PACKS[@]}")
row "b3sum --num-threads 2 over the packs" "$B3" "$B3"
row "hoard check" "$(best "$HOARD" --store "$STORE" check)" "$B3"
NEW=$(best "$HOARD" --store "$STORE" index rebuild)
row "hoard index rebuild (checks every record)" "$NEW" "$B3"
if [ -n "${OLD_HOARD:-}" ]; then
    OLD=$(best "$OLD_HOARD" --store "$STORE" index rebuild)
    row "previous index rebuild (headers only)" "$OLD" "$B3"
    echo "rebuild: new / previous time: $(echo "scale=2; $NEW / $OLD" | bc -l)"
fi

# 2. GC with the index lost: nothing may be deleted, every pack is walked.
# (An empty index: rebuilt while the packs were moved aside.)
LOST=$WORK/repair-lost
rm -rf "$LOST"; cp -a "$STORE" "$LOST"
mv "$LOST/packs" "$LOST/packs.aside"; "$HOARD" --store "$LOST" index rebuild >/dev/null
rmdir "$LOST/packs" 2>/dev/null || true; mv "$LOST/packs.aside" "$LOST/packs"
find "$LOST/packs" -name '*.pack' -exec touch -d '1 hour ago' {} +
GC=$(best "$HOARD" --store "$LOST" gc)
row "hoard gc, index lost (walks every pack)" "$GC" "$B3"
echo "  $("$HOARD" --store "$LOST" gc --json 2>/dev/null | grep -E '"packs_deleted"|"chunks_missing"' | tr -d ' ,' | tr '\n' ' ')"
rm -rf "$LOST"

# 3. The export over TLS and over plain TCP, copied by nbdcopy.
if command -v nbdcopy >/dev/null && command -v openssl >/dev/null; then
    C=$WORK/repair-certs; rm -rf "$C"; mkdir -p "$C/server" "$C/client"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
    key "$C/ca-key.pem"; openssl req -x509 -new -key "$C/ca-key.pem" -out "$C/server/ca-cert.pem" -days 2 -subj /CN=bench-ca
    cp "$C/server/ca-cert.pem" "$C/client/"
    for who in server client; do
        key "$C/$who/$who-key.pem"
        openssl req -new -key "$C/$who/$who-key.pem" -subj "/CN=127.0.0.1" -out "$C/$who.csr"
        if [ $who = server ]; then ext="subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"; else ext="extendedKeyUsage=clientAuth"; fi
        printf '%s\n' "$ext" >"$C/$who.ext"
        openssl x509 -req -in "$C/$who.csr" -CA "$C/server/ca-cert.pem" -CAkey "$C/ca-key.pem" -CAcreateserial \
            -days 2 -extfile "$C/$who.ext" -out "$C/$who/$who-cert.pem" 2>/dev/null
    done
    SNAP=$("$HOARD" --store "$STORE" snapshots | tail -1 | awk '{print $1}')
    serve() { # PORT extra...
        local port=$1; shift
        "$HOARD" --store "$STORE" export "$SNAP" disk.img --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 &
        echo $!
    }
    P1=$(serve 10911 --insecure-tcp); P2=$(serve 10912 --tls-creds "$C/server")
    sleep 1
    BYTES=$(stat -c %s "$IMG")
    PLAIN=$(best nbdcopy nbd://127.0.0.1:10911/disk.img null:)
    TLS=$(best nbdcopy "nbds://127.0.0.1:10912/disk.img?tls-certificates=$C/client" null:)
    kill "$P1" "$P2"; wait "$P1" "$P2" 2>/dev/null || true
    printf '%-44s %7.2f s  %5s MB/s of image\n' "nbdcopy from export, plain TCP" "$PLAIN" \
        "$(echo "scale=0; $BYTES / 1000000 / $PLAIN" | bc -l)"
    printf '%-44s %7.2f s  %5s MB/s of image  %5.2fx plain\n' "nbdcopy from export, TLS" "$TLS" \
        "$(echo "scale=0; $BYTES / 1000000 / $TLS" | bc -l)" "$(echo "scale=4; $PLAIN / $TLS" | bc -l)"
    rm -rf "$C"
fi
