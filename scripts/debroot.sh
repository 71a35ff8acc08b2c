#!/usr/bin/env bash
# Makes DIR a clean, minimal Debian bookworm root (debootstrap --variant=minbase
# from the machine's mirror), for installing the hoard package into as on a
# fresh machine (tests/package.rs). The first run caches the root as a tarball
# in /var/cache/hoard (about 200 MB, 40 s); later runs unpack that copy.
#   scripts/debroot.sh DIR
set -euo pipefail
DIR=${1:?usage: debroot.sh DIR}
CACHE=/var/cache/hoard/debroot-bookworm.tar
if [ ! -s "$CACHE" ]; then
    command -v debootstrap >/dev/null || {
        echo "debroot: installing debootstrap" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    TMP=$(mktemp -d /var/tmp/debroot.XXXXXX)
    trap 'rm -rf "$TMP"' EXIT
    echo "debroot: debootstrap bookworm from $MIRROR" >&2
    debootstrap --variant=minbase bookworm "$TMP" "$MIRROR" >&2
    mkdir -p "$(dirname "$CACHE")"
    tar -C "$TMP" -cf "$CACHE.tmp" . && mv "$CACHE.tmp" "$CACHE"
fi
mkdir -p "$DIR"
tar -C "$DIR" -xf "$CACHE"
cp /etc/resolv.conf "$DIR/etc/resolv.conf"
