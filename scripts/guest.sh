#!/usr/bin/env bash
# Builds the guest the VM-mode tests boot under qemu-system-x86_64 (TCG):
# Debian's kernel plus a busybox initramfs that
#   - mounts its virtio disk (ext4, /dev/vda) on /mnt and keeps appending
#     numbered lines to /mnt/log.txt ("line N", one write each),
#   - answers the ACPI power button with an orderly shutdown (busybox acpid:
#     stop the writer, sync, unmount, power off),
#   - runs the real qemu-ga on the virtio-serial port org.qemu.guest_agent.0.
# Everything comes from Debian packages (the kernel .deb is downloaded,
# busybox-static and qemu-guest-agent are installed by scripts/setup.sh).
# Cached: prints the directory holding vmlinuz and initrd.gz, and rebuilds
# only when this script changed.
#   scripts/guest.sh [DIR]     (default /var/cache/hoard/guest)
set -euo pipefail
OUT=${1:-/var/cache/hoard/guest}
STAMP=$(sha256sum "$0" | cut -c1-16)
if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "$OUT"
    exit 0
fi
for tool in busybox qemu-ga dpkg-deb apt-get; do
    command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
    command -v "$tool" >/dev/null || { echo "guest.sh: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"

# The kernel: whatever linux-image-amd64 points at in the machine's mirror.
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -1)
[ -n "$KPKG" ] || { echo "guest.sh: no linux-image package in the apt lists (apt-get update?)" >&2; exit 1; }
KVER=${KPKG#linux-image-}
if [ ! -f "$OUT/$KPKG.deb" ]; then
    (cd "$W" && apt-get -o APT::Sandbox::User=root download "$KPKG" >/dev/null && mv ./*.deb "$OUT/$KPKG.deb")
fi
dpkg-deb -x "$OUT/$KPKG.deb" "$W/k"

R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,mnt,tmp,run,var/run,etc/acpi/PWRF,lib/modules,usr/sbin}
cp "$(command -v busybox)" "$R/bin/busybox"
# Modules, each after the ones its modinfo `depends=` names; a module the
# kernel has built in is simply not found.
MODS="virtio_pci virtio_blk virtio_console crc32c_generic ext4 button evdev"
: >"$R/lib/modules/order"
add_module() {
    local m=$1 f dep
    [ -f "$R/lib/modules/$m.ko" ] && return 0
    f=$(find "$W/k/lib/modules/$KVER" -name "$m.ko*" | head -1)
    [ -n "$f" ] || return 0
    case "$f" in
        *.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$R/lib/modules/$m.ko" ;;
        *) cp "$f" "$R/lib/modules/$m.ko" ;;
    esac
    for dep in $(tr '\0' '\n' <"$R/lib/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    echo "$m" >>"$R/lib/modules/order"
}
for m in $MODS; do add_module "$m"; done
# qemu-ga and the libraries it links, at their own paths.
QGA=$(command -v qemu-ga)
cp "$QGA" "$R/usr/sbin/qemu-ga"
ldd "$QGA" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done

cat >"$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "guest: power button: orderly shutdown" >/dev/console
kill "$(cat /run/writer.pid)" 2>/dev/null
sync
umount /mnt && echo "guest: /mnt unmounted" >/dev/console
poweroff -f
EOF
chmod +x "$R/etc/acpi/PWRF/00000080"

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
while read -r m; do insmod "/lib/modules/$m.ko" || echo "guest: insmod $m failed"; done </lib/modules/order
i=0
until mount -t ext4 /dev/vda /mnt 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "guest: cannot mount /dev/vda"; dmesg | tail -20; break; }
    usleep 100000
done
n=0; [ -f /mnt/log.txt ] && n=$(wc -l </mnt/log.txt)
( while :; do n=$((n + 1)); echo "line $n" >>/mnt/log.txt; usleep 10000; done ) &
echo $! >/run/writer.pid
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
    qemu-ga -m virtio-serial -p "/dev/$(basename "$p")" -f /run/qga.pid -t /run &
done
acpid -f -c /etc/acpi -l /dev/null &
echo "guest: ready"
while :; do sleep 3600; done
EOF
chmod +x "$R/init"

(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$OUT/initrd.gz.tmp")
cp "$W/k/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$STAMP" >"$OUT/stamp"
echo "$OUT"
