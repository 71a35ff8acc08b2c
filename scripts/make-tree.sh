#!/usr/bin/env bash
# The benchmarks' real tree, ~2 GiB: copies of /usr/share, /usr/include,
# /usr/bin and part of /usr/lib. Does nothing if DIR exists.
#   scripts/make-tree.sh DIR
set -euo pipefail
SRC=$1
[ -d "$SRC" ] && exit 0
mkdir -p "$SRC"
cp -a /usr/share /usr/include /usr/bin "$SRC/"
mkdir -p "$SRC/lib"
for d in /usr/lib/*/; do
    [ "$(du -s "$SRC" | cut -f1)" -gt $((2 * 1024 * 1024)) ] && break
    cp -a "$d" "$SRC/lib/" 2>/dev/null || true
done
