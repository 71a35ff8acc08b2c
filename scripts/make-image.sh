#!/usr/bin/env bash
# Builds a realistic ext4 disk image: SIZE_MB MiB, about three quarters
# filled with real files from this machine's /usr (libraries, binaries,
# documentation), the rest free space.
#   scripts/make-image.sh IMAGE SIZE_MB
set -euo pipefail
IMG=$1
SIZE_MB=$2
BUDGET=$((SIZE_MB * 1024 * 1024 * 3 / 4))
STAGE=$(mktemp -d "$(dirname "$IMG")/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
total=0
for d in /usr/lib/* /usr/share /usr/bin /usr/include /usr/libexec /usr/sbin; do
    [ -d "$d" ] || continue
    size=$(du -sb "$d" 2>/dev/null | cut -f1)
    if [ $((total + size)) -le "$BUDGET" ]; then
        mkdir -p "$STAGE$(dirname "$d")"
        # Hard links when on the same file system (no copy), a copy otherwise.
        cp -al "$d" "$STAGE$d" 2>/dev/null || cp -a "$d" "$STAGE$d"
        total=$((total + size))
    fi
done
rm -f "$IMG"
truncate -s "${SIZE_MB}M" "$IMG"
mkfs.ext4 -q -F -E root_owner=0:0 -d "$STAGE" "$IMG"
echo "made $IMG: ${SIZE_MB} MiB ext4 holding $((total / 1024 / 1024)) MiB of files from /usr" >&2
