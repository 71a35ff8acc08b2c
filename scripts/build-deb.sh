#!/usr/bin/env bash
# Builds the Debian package of hoard: target/debian/hoard_VERSION_ARCH.deb
# (with CARGO_TARGET_DIR, under it). Debian's conventions without debhelper:
# the binary in /usr/bin, completions where bash-completion, zsh and fish
# look, man pages gzipped in /usr/share/man/man1, systemd template units in
# /lib/systemd/system, an example job as a conffile in /etc/hoard/jobs,
# copyright and changelog in /usr/share/doc/hoard, Depends computed by
# dpkg-shlibdeps, files owned by root (dpkg-deb --root-owner-group).
#
#   scripts/build-deb.sh                  release build, then package
#   scripts/build-deb.sh --binary PATH    package this hoard binary instead
#                                         (tests/package.rs packages the test build)
#   scripts/build-deb.sh --out DIR        where the .deb goes
#
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BINARY=""
OUT="$TARGET/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) BINARY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$BINARY" ]; then
    cargo build --release -p hoard-cli >&2
    BINARY="$TARGET/release/hoard"
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/hoard"
install -d "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/usr/share/man/man1" \
    "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/zsh/vendor-completions" \
    "$ROOT/usr/share/fish/vendor_completions.d" "$ROOT/lib/systemd/system" \
    "$ROOT/etc/hoard/jobs" "$ROOT/usr/share/doc/hoard/examples"
install -m 0755 "$BINARY" "$ROOT/usr/bin/hoard"
# Debian ships binaries without debug info (a -dbgsym package would hold it).
strip --strip-debug --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/hoard"
H="$ROOT/usr/bin/hoard"
"$H" completions bash >"$ROOT/usr/share/bash-completion/completions/hoard"
"$H" completions zsh >"$ROOT/usr/share/zsh/vendor-completions/_hoard"
"$H" completions fish >"$ROOT/usr/share/fish/vendor_completions.d/hoard.fish"
"$H" man "$ROOT/usr/share/man/man1"
gzip -9n "$ROOT"/usr/share/man/man1/*.1
install -m 0644 packaging/hoard-job@.service "$ROOT/lib/systemd/system/"
install -m 0644 packaging/hoard-serve.service "$ROOT/lib/systemd/system/"
install -m 0644 packaging/example.toml "$ROOT/etc/hoard/jobs/example.toml"
install -m 0644 packaging/reference.toml "$ROOT/usr/share/doc/hoard/examples/reference.toml"
install -m 0644 packaging/serve.toml "$ROOT/usr/share/doc/hoard/examples/serve.toml"
install -m 0644 format-spec/job-file.md "$ROOT/usr/share/doc/hoard/job-file.md"
# The pages --help and the errors cite (format-spec/X.md, docs/X.md).
install -d "$ROOT/usr/share/doc/hoard/format-spec" "$ROOT/usr/share/doc/hoard/docs"
install -m 0644 format-spec/*.md "$ROOT/usr/share/doc/hoard/format-spec/"
install -m 0644 docs/*.md "$ROOT/usr/share/doc/hoard/docs/"
install -m 0644 README.md "$ROOT/usr/share/doc/hoard/README.md"
install -m 0644 packaging/copyright "$ROOT/usr/share/doc/hoard/copyright"
printf 'hoard (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- hoard developers <hoard@localhost>  %s\n' \
    "$VERSION" "$(git rev-parse --short HEAD 2>/dev/null || echo source)" "$(date -R)" \
    | gzip -9n >"$ROOT/usr/share/doc/hoard/changelog.Debian.gz"
echo /etc/hoard/jobs/example.toml >"$ROOT/DEBIAN/conffiles"
# Shared-library dependencies, as debhelper's ${shlibs:Depends}.
mkdir -p "$STAGE/debian"
printf 'Source: hoard\n\nPackage: hoard\nArchitecture: any\n' >"$STAGE/debian/control"
DEPENDS=$(cd "$STAGE" && dpkg-shlibdeps -O -e"hoard/usr/bin/hoard" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat >"$ROOT/DEBIAN/control" <<EOF
Package: hoard
Version: $VERSION
Architecture: $ARCH
Maintainer: hoard developers <hoard@localhost>
Installed-Size: $SIZE
Depends: $DEPENDS
Recommends: systemd
Suggests: lxc, rsync, btrfs-progs, qemu-system-x86, default-mta | mail-transport-agent
Section: admin
Priority: optional
Description: deduplicating backups of VM disks and container trees
 hoard backs up running QEMU virtual machines (snapshot, suspend and stop
 modes, dirty-bitmap incrementals), LXC containers (stop, suspend and
 snapshot modes), disk images and file trees into a content-addressed,
 deduplicating chunk store in a directory or an S3 bucket, and restores
 them. Backup jobs are TOML files in /etc/hoard/jobs, run by systemd timers
 (hoard job install NAME).
EOF
mkdir -p "$OUT"
DEB="$OUT/hoard_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >&2
echo "$DEB"
