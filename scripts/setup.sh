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
#   busybox-static   the test guest's userland (scripts/guest.sh), and the
#                    test containers' (lxc-templates' busybox template)
#   lxc lxc-templates  container backup modes against real LXC containers
#   btrfs-progs      snapshot mode's btrfs provider, on a loop-mounted volume
#   rsync            container suspend mode with --tmpdir (vzdump's way)
#   libnbd-bin       nbdinfo --map and nbdcopy, clients of `hoard export` in tests
#   fuse3            fusermount3, to unmount `hoard mount` as a user would
#   python3-venv     a venv for SeaweedFS (scripts/seaweedfs.sh), the S3 tests' server
#   age              age-keygen and age: the X25519 identities of encrypted
#                    stores' recovery copies, and a second reader of them
#   ceph-mon ceph-osd radosgw ceph-common  a one-node Ceph with its S3
#                    gateway (scripts/ceph-rgw.sh), the S3 tests' second
#                    server; uuid-runtime and curl for that script
#   systemd          systemd-analyze: job schedules are checked by systemd's
#                    own calendar parser, the generated units by its verifier
#   dpkg-dev debootstrap  the Debian package (dpkg-shlibdeps) and the clean
#                    root it is installed into in tests/package.rs
set -euo pipefail
PKGS=(libclang-dev librocksdb-dev e2fsprogs b3sum zstd bc util-linux qemu-utils busybox-static
      lxc lxc-templates btrfs-progs rsync libnbd-bin fuse3 age python3-venv
      ceph-mon ceph-osd radosgw ceph-common uuid-runtime curl systemd dpkg-dev debootstrap)
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
# qemu-system-x86 10.x (live backups of a real VM) comes from bookworm-backports,
# matching qemu-utils. It is reached through a private sources list (the
# machine's own mirror plus its backports suite), so /etc/apt stays untouched.
if ! command -v qemu-system-x86_64 >/dev/null; then
    APT_DIR=/var/cache/hoard/apt
    mkdir -p "$APT_DIR/lists/partial"
    MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    printf 'deb %s bookworm main\ndeb %s bookworm-backports main\n' "$MIRROR" "$MIRROR" >"$APT_DIR/sources.list"
    APTO=(-o "Dir::Etc::sourcelist=$APT_DIR/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$APT_DIR/lists")
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "setup: installing qemu-system-x86 from bookworm-backports" >&2
    $SUDO apt-get "${APTO[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APTO[@]}" install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 qemu-guest-agent >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
# The VM-mode tests' guest (kernel from the mirror, busybox, qemu-ga); cached.
"$(dirname "$0")/guest.sh" >/dev/null
# SeaweedFS for the S3 backend's tests; cached, pinned by hash.
"$(dirname "$0")/seaweedfs.sh" >/dev/null
