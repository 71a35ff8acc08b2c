//! Building file trees with every kind of entry, and comparing two trees by
//! content and metadata (`diff -r` ignores modes, owners, times, xattrs,
//! hardlinks and holes).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::noise;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// Crafted cases: every file type, long and non-UTF-8 names, empty, sparse
/// and 0-permission files, xattrs (user.* and a POSIX ACL), hardlinks, deep
/// nesting, odd mtimes; devices and foreign owners when root.
pub fn crafted(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("small.txt"), b"hello\n").unwrap();
    fs::write(root.join("noise.bin"), noise(1, 3 << 20)).unwrap();
    let long = "L".repeat(255);
    fs::write(root.join(&long), b"long name").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad-\xff\xfe-name")), b"not utf-8").unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    sparse.write_all_at(&noise(2, 100_000), 1 << 20).unwrap();
    // Data, then nothing but a hole to the end: the size comes from the
    // entry, not from a write.
    let tail_hole = fs::File::create(root.join("tail-hole")).unwrap();
    tail_hole.write_all_at(b"head", 0).unwrap();
    tail_hole.set_len(8 << 20).unwrap();
    fs::write(root.join("zero-perm"), b"secret").unwrap();
    fs::set_permissions(root.join("zero-perm"), fs::Permissions::from_mode(0o0)).unwrap();
    fs::write(root.join("suid"), b"x").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("hard-a"), noise(3, 70_000)).unwrap();
    fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::hard_link(root.join("hard-a"), root.join("sub/hard-c")).unwrap();
    symlink("small.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/absolute", root.join("link-abs")).unwrap();
    symlink("../../escape", root.join("sub/link-up")).unwrap();
    let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let _ = std::os::unix::net::UnixListener::bind(root.join("socket"));
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level-{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep").unwrap();
    fs::create_dir(root.join("ro-dir")).unwrap();
    fs::write(root.join("ro-dir/inside"), b"in a read-only dir").unwrap();
    fs::set_permissions(root.join("ro-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    set_xattr(&root.join("small.txt"), "user.comment", b"a value");
    set_xattr(&root.join("sub"), "user.dir", b"on a directory");
    // A POSIX access ACL granting user 1234 read (system.posix_acl_access v2).
    let mut acl = vec![2, 0, 0, 0];
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1234),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    set_xattr(&root.join("noise.bin"), "system.posix_acl_access", &acl);
    set_mtime(&root.join("small.txt"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("link-rel"), 1_100_000_000, 5);
    if is_root() {
        let dev = CString::new(root.join("null-dev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) },
            0
        );
        let blk = CString::new(root.join("blk-dev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(blk.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 200)) },
            0
        );
        std::os::unix::fs::lchown(root.join("small.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(42), Some(43)).unwrap();
    }
}

/// Copies part of /usr (real files) into `to`, up to about `budget` bytes.
pub fn copy_real(to: &Path, budget: u64) {
    let mut used = 0u64;
    let st = std::process::Command::new("cp")
        .args(["-a", "/usr/share/doc"])
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
    used += dir_bytes(to);
    for d in ["/usr/lib/python3", "/usr/share/perl", "/usr/include"] {
        if used >= budget || !Path::new(d).exists() {
            continue;
        }
        let dest = to.join(Path::new(d).file_name().unwrap());
        let st = std::process::Command::new("cp")
            .args(["-a", d])
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        used += dir_bytes(&dest);
    }
}

pub fn dir_bytes(p: &Path) -> u64 {
    walk_all(p)
        .iter()
        .filter_map(|f| fs::symlink_metadata(f).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Every path below `root`, sorted, not following symlinks.
pub fn walk_all(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = Vec::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let l = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if l >= 0 {
            v.truncate(l as usize);
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    out
}

/// Asserts that `b` holds the same tree as `a`: names, types, modes,
/// owners, mtimes (ns), sizes, contents, symlink targets, device numbers,
/// xattrs, hardlink groups, and holes where `a` has them.
pub fn assert_same_tree(a: &Path, b: &Path) {
    compare_trees(a, b, true)
}

/// As [`assert_same_tree`], except holes: a mounted archive reports every
/// file as fully allocated.
pub fn assert_same_tree_but_holes(a: &Path, b: &Path) {
    compare_trees(a, b, false)
}

fn compare_trees(a: &Path, b: &Path, holes: bool) {
    let pa = walk_all(a);
    let pb = walk_all(b);
    let rel = |root: &Path, v: &[PathBuf]| {
        v.iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect::<Vec<_>>()
    };
    assert_eq!(rel(a, &pa), rel(b, &pb), "different sets of paths");
    let mut links_a: HashMap<u64, PathBuf> = HashMap::new();
    let mut links_b: HashMap<u64, PathBuf> = HashMap::new();
    for p in rel(a, &pa).into_iter().chain(std::iter::once(PathBuf::new())) {
        let (x, y) = (a.join(&p), b.join(&p));
        let (mx, my) = (
            fs::symlink_metadata(&x).unwrap(),
            fs::symlink_metadata(&y).unwrap(),
        );
        let what = p.display();
        assert_eq!(mx.mode(), my.mode(), "{what}: mode");
        assert_eq!((mx.uid(), mx.gid()), (my.uid(), my.gid()), "{what}: owner");
        if !mx.is_dir() || !p.as_os_str().is_empty() {
            assert_eq!(
                (mx.mtime(), mx.mtime_nsec()),
                (my.mtime(), my.mtime_nsec()),
                "{what}: mtime"
            );
        }
        assert_eq!(xattrs(&x), xattrs(&y), "{what}: xattrs");
        assert_eq!(mx.rdev(), my.rdev(), "{what}: rdev");
        if mx.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&x).unwrap(),
                fs::read_link(&y).unwrap(),
                "{what}: link target"
            );
        } else if mx.is_file() {
            assert_eq!(mx.len(), my.len(), "{what}: size");
            let (ca, cb) = (read_any(&x), read_any(&y));
            assert!(ca == cb, "{what}: contents differ");
            // Holes stay holes (allowing a block of slack per file).
            assert!(
                !holes || my.blocks() <= mx.blocks() + 8,
                "{what}: {} blocks, original {}",
                my.blocks(),
                mx.blocks()
            );
            if mx.nlink() > 1 {
                let fa = links_a.entry(mx.ino()).or_insert_with(|| p.clone()).clone();
                let fb = links_b.entry(my.ino()).or_insert_with(|| p.clone()).clone();
                assert_eq!(fa, fb, "{what}: hardlink group");
                assert_eq!(mx.nlink(), my.nlink(), "{what}: link count");
            }
        }
    }
}

/// Reads a file even if its mode forbids it (tests run as root or own it).
fn read_any(p: &Path) -> Vec<u8> {
    match fs::read(p) {
        Ok(v) => v,
        Err(_) => {
            let mode = fs::symlink_metadata(p).unwrap().mode();
            fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
            let v = fs::read(p).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777)).unwrap();
            v
        }
    }
}
