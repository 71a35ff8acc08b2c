//! The `*at` system calls the extractor restores through, each relative to
//! a directory descriptor and never following a symlink in the last
//! component: on `nix`, safe signatures, `io::Result`. The extractor itself
//! holds no `unsafe`; what `nix` lacks (`fsetxattr`) is the one call here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::Entry;

fn io(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

/// Whether this process runs as root (may chown, make device nodes).
pub(super) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Opens the directory at `path` (the restore target, as the user named it).
pub(super) fn open_dir(path: &CStr) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
}

/// Opens `rel` below `root` without following any symlink and without
/// leaving `root` (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
pub(super) fn open_beneath(root: BorrowedFd<'_>, rel: &CStr, flags: OFlag) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(root, rel, how).map_err(io)
}

/// Removes a non-directory `name`; one that is absent is no error.
pub(super) fn unlink(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Err(nix::errno::Errno::ENOENT) | Ok(()) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

pub(super) fn mkdir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    nix::sys::stat::mkdirat(dir, name, Mode::S_IRWXU).map_err(io)
}

/// Creates `name` as a new regular file (0600), refusing an existing one
/// or a symlink.
pub(super) fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(io)
}

pub(super) fn symlink(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    nix::unistd::symlinkat(target, dir, name).map_err(io)
}

/// Whether `name` in `dir` is a regular file (not following a symlink).
pub(super) fn is_regular_file(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
}

/// A hard link `name` in `dir` to `target` in `target_dir`; never follows
/// a symlink.
pub(super) fn hard_link(
    target_dir: BorrowedFd<'_>,
    target: &CStr,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    nix::unistd::linkat(target_dir, target, dir, name, nix::fcntl::AtFlags::empty()).map_err(io)
}

/// A device node, FIFO or socket `name` of type `kind` (0600 until its
/// mode is applied).
pub(super) fn make_node(dir: BorrowedFd<'_>, name: &CStr, kind: SFlag, rdev: u64) -> io::Result<()> {
    nix::sys::stat::mknodat(dir, name, kind, Mode::S_IRUSR | Mode::S_IWUSR, rdev).map_err(io)
}

/// Owner (when `owner`), extended attributes, mode and times of an open
/// file or directory, in that order: chown clears set-id bits, so the mode
/// comes after it. Extended attributes a file system refuses (none there,
/// a namespace that needs privileges) are passed over.
pub(super) fn apply_fd(fd: BorrowedFd<'_>, e: &Entry, owner: bool) -> io::Result<()> {
    if owner {
        nix::unistd::fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid))).map_err(io)?;
    }
    for (name, value) in &e.xattrs {
        let Ok(n) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: a valid descriptor, a C string, and a buffer with its
        // length; the call only reads them.
        unsafe { libc::fsetxattr(fd.as_raw_fd(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    }
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(e.mode)).map_err(io)?;
    let t = time(e);
    nix::sys::stat::futimens(fd, &t, &t).map_err(io)
}

/// Owner (when `owner`), mode (with `chmod`: never for a symlink) and times
/// of `name` in `dir`, not following a symlink.
pub(super) fn apply_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    e: &Entry,
    owner: bool,
    chmod: bool,
) -> io::Result<()> {
    if owner {
        nix::unistd::fchownat(
            dir,
            name,
            Some(Uid::from_raw(e.uid)),
            Some(Gid::from_raw(e.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io)?;
    }
    if chmod {
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(e.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(io)?;
    }
    let t = time(e);
    nix::sys::stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io)
}

/// The entry's mtime; atime is not archived, so it is restored as the mtime.
fn time(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime.sec, e.mtime.nsec as _)
}
