//! [`MountTree`] served to the kernel through FUSE (the fuser crate, no
//! libfuse): read-only, attributes cached for an hour (nothing changes),
//! files opened with the kernel's page cache kept between opens.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use super::{MountTree, Node};
use crate::archive::{EntryKind, Time};

const TTL: Duration = Duration::from_secs(3600);

/// Whether this machine can mount FUSE file systems, and if not, why.
pub fn usable() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "/dev/fuse: {e} (load the fuse module, or in a container pass the device through)"
        )),
    }
}

fn time(t: Time) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec));
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nsec
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Dir => FileType::Directory,
        EntryKind::File | EntryKind::Hardlink => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDev => FileType::CharDevice,
        EntryKind::BlockDev => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
    }
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let e = &n.entry;
    FileAttr {
        ino: INodeNo(ino),
        size: e.size,
        blocks: e.size.div_ceil(512),
        atime: time(e.mtime),
        mtime: time(e.mtime),
        ctime: time(e.ctime),
        crtime: time(e.mtime),
        kind: file_type(e.kind),
        perm: (e.mode & 0o7777) as u16,
        nlink: if e.kind == EntryKind::Dir { 2 } else { n.nlink },
        uid: e.uid,
        gid: e.gid,
        rdev: e.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The FUSE face of a [`MountTree`]; failed reads are logged through `log`.
pub(crate) struct Fuse {
    tree: MountTree,
    log: fn(&str),
}

/// Answers a getxattr/listxattr: the size when asked for 0 bytes, ERANGE
/// when the caller's buffer is too small.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => match self.tree.node(ino) {
                Some(n) => reply.entry(&TTL, &attr(ino, n), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.node(ino.0) {
            Some(n) => reply.attr(&TTL, &attr(ino.0, n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.node(ino.0) {
            Some(n) if n.entry.kind == EntryKind::Symlink => reply.data(&n.entry.target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.tree.node(ino.0) {
            // Contents never change: the kernel may keep what it cached.
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.read(ino.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(f) => {
                (self.log)(&format!("read of inode {} at {offset}: {}", ino.0, f.message));
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(dir) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let dots = [(&b"."[..], ino.0), (&b".."[..], dir.parent)];
        let entries = dots
            .into_iter()
            .chain(dir.children.iter().map(|(n, i)| (n.as_slice(), *i)));
        for (k, (name, child)) in entries.enumerate().skip(offset as usize) {
            let kind = self
                .tree
                .node(child)
                .map_or(FileType::RegularFile, |n| file_type(n.entry.kind));
            // The offset of an entry is where the next readdir resumes.
            if reply.add(INodeNo(child), k as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes: u64 = (1..=self.tree.inodes())
            .filter_map(|i| self.tree.node(i))
            .map(|n| n.entry.size)
            .sum();
        reply.statfs(bytes.div_ceil(4096), 0, 0, self.tree.inodes(), 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(n) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match n
            .entry
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        {
            Some((_, v)) => xattr_reply(reply, size, v),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(n) = self.tree.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (k, _) in &n.entry.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        xattr_reply(reply, size, &names);
    }
}

/// Mounts `tree` read-only at `mountpoint`, served by `threads` threads in
/// the background; unmounted when the session is dropped.
pub fn mount(
    tree: MountTree,
    mountpoint: &Path,
    fs_name: &str,
    allow_other: bool,
    threads: usize,
    log: fn(&str),
) -> std::io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(fs_name.into()),
        MountOption::Subtype("hoard".into()),
    ];
    if allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(threads.max(1));
    fuser::spawn_mount(Fuse { tree, log }, mountpoint, &config)
}

/// Lazily unmounts `mountpoint` (MNT_DETACH): gone from the namespace now,
/// released by the kernel once nothing uses it.
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
