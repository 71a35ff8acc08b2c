#!/usr/bin/env bash
# Writes a seed corpus of valid inputs for each fuzz target into fuzz/seeds/,
# taken from a real store the hoard binary makes, so the fuzzers start past
# the CRC checks instead of guessing them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p hoard-cli
HOARD=${CARGO_TARGET_DIR:-target}/debug/hoard
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$HOARD" --store "$T/s" init --chunk-size 64K >/dev/null
# Compressible, incompressible and tail chunks.
{ (yes hoard || true) | head -c 100000; head -c 70000 /dev/urandom; } > "$T/img"
"$HOARD" --store "$T/s" backup --id seed "d.img:$T/img" >/dev/null 2>&1
mkdir -p fuzz/seeds/chunk_record fuzz/seeds/fixed_index fuzz/seeds/manifest
pack=$(find "$T/s/packs" -name '*.pack' | head -1)
offset=32; n=0
size=$(stat -c %s "$pack")
while [ "$offset" -lt "$size" ]; do
    stored=$(od -An -tu4 -j $((offset + 12)) -N4 "$pack" | tr -d ' ')
    len=$((56 + stored))
    dd if="$pack" of="fuzz/seeds/chunk_record/record-$n" bs=1 skip="$offset" count="$len" status=none
    offset=$((offset + len)); n=$((n + 1))
done
cp "$(find "$T/s/snapshots" -name '*.fidx' | head -1)" fuzz/seeds/fixed_index/d.img.fidx
cp "$(find "$T/s/snapshots" -name manifest.json | head -1)" fuzz/seeds/manifest/manifest.json
mkdir -p fuzz/seeds/pack_scan
cp "$pack" fuzz/seeds/pack_scan/pack
mkdir -p fuzz/seeds/job_file
cp packaging/reference.toml packaging/example.toml fuzz/seeds/job_file/
echo "seeds: $n records, 1 fixed index, 1 manifest in fuzz/seeds/" >&2
