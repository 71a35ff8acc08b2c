#!/usr/bin/env bash
# Installs the Debian packages hoard needs to build and test. Idempotent:
# does nothing (and needs no network) when everything is there.
#   libclang-dev     bindgen, for the rocksdb crate's C bindings
#   librocksdb-dev   RocksDB 7.8 to link against (saves a ~12 min C++ build)
#   e2fsprogs        mkfs.ext4 -d for realistic test and demo images
#   b3sum zstd bc    baselines and arithmetic in benches/e2e.sh
#   util-linux       losetup/mount for block-device and disk-full tests
#   qemu-utils       qemu-storage-daemon, qemu-img, qemu-io: the live-copy tests
#                    drive a real QEMU block layer (10.x here, from backports)
set -euo pipefail
PKGS=(libclang-dev librocksdb-dev e2fsprogs b3sum zstd bc util-linux qemu-utils)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
