#!/usr/bin/env bash
# The main job end to end: builds hoard, generates a realistic 1 GiB ext4
# disk image, backs it up twice into a store under ./demo, restores it,
# checks the restore bit for bit, verifies the store and prints the summaries.
#   SIZE_MB=4096 scripts/demo.sh    for a bigger image
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
SIZE_MB=${SIZE_MB:-1024}
DEMO=$PWD/demo
mkdir -p "$DEMO"
cargo build --release -q -p hoard-cli
HOARD="${CARGO_TARGET_DIR:-$PWD/target}/release/hoard"
export HOARD_STORE=$DEMO/store

IMG=$DEMO/disk-${SIZE_MB}M.img
[ -s "$IMG" ] || scripts/make-image.sh "$IMG" "$SIZE_MB"
[ -f "$HOARD_STORE/config.json" ] || "$HOARD" init

echo "== first backup"
"$HOARD" backup --kind vm --id demo "disk.img:$IMG"
echo "== second backup (unchanged image: nothing new is stored)"
"$HOARD" backup --kind vm --id demo "disk.img:$IMG"
echo "== snapshots"
"$HOARD" snapshots
echo "== restore of the newest snapshot"
"$HOARD" restore --force vm/demo disk.img "$DEMO/restored.img"
cmp "$IMG" "$DEMO/restored.img"
echo "== restored image is bit-identical to $IMG"
echo "== verify: every stored chunk read back and checked"
"$HOARD" verify
"$HOARD" show vm/demo
du -sh "$HOARD_STORE" | sed 's/^/store size: /'
rm -f "$DEMO/restored.img"
