//! Walking a tree in archive order on a thread of its own.
//!
//! Depth-first, children sorted by name bytes, never following symlinks. The
//! directory listings, `lstat`s, link targets and xattrs of the entries ahead
//! are fetched while the backup still reads or compares the current ones:
//! for an incremental that reads few files this walk is most of the work.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use ignore::gitignore::Gitignore;

use super::{fits_format, Entry, EntryKind, Time};

/// What the walk found, in archive order.
pub(crate) enum Scanned {
    /// An entry to archive and the path to read it from. A regular file's
    /// xattrs are left to the reader: an unchanged file keeps its previous ones.
    Entry(Entry, PathBuf),
    /// Something not archived.
    Skipped(Skip, PathBuf, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Cannot be listed, stat()ed or does not fit the format: a warning.
    Unreadable,
    /// Matches an `--exclude` pattern: counted, no warning.
    Excluded,
    /// A mount point of another file system, archived as an empty directory.
    OtherFileSystem,
}

/// How to walk one tree.
pub(crate) struct Scan<'a> {
    pub root: &'a Path,
    pub root_meta: fs::Metadata,
    pub exclude: &'a Gitignore,
    pub one_file_system: bool,
    pub include_mounts: &'a [PathBuf],
    /// Whether every regular file will be read (no previous archive to
    /// reuse unchanged ones from): then the walk starts reading each one.
    pub hint_contents: bool,
}

/// Entries per message: a channel send per entry would cost as much as the
/// `lstat` it saves.
const BATCH: usize = 256;

/// Walks the tree and sends what it finds in batches, in archive order,
/// until the walk ends or the receiver is gone.
pub(crate) fn scan(s: &Scan, out: Sender<Vec<Scanned>>) {
    let mut w = Walk {
        scan: s,
        root_dev: s.root_meta.dev(),
        hardlinks: HashMap::new(),
        batch: Vec::with_capacity(BATCH),
        out,
    };
    let mut root = entry_from(Vec::new(), &s.root_meta, EntryKind::Dir);
    root.xattrs = read_xattrs(s.root);
    if w.emit(Scanned::Entry(root, s.root.to_path_buf())) {
        w.dir(s.root, b"");
    }
    let batch = std::mem::take(&mut w.batch);
    if !batch.is_empty() {
        let _ = w.out.send(batch);
    }
}

struct Walk<'a> {
    scan: &'a Scan<'a>,
    root_dev: u64,
    /// (dev, inode) → path of the first entry, for files with several links.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    batch: Vec<Scanned>,
    out: Sender<Vec<Scanned>>,
}

impl Walk<'_> {
    /// Queues `item`; false once the receiver is gone (the backup failed).
    fn emit(&mut self, item: Scanned) -> bool {
        self.batch.push(item);
        if self.batch.len() < BATCH {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.out.send(batch).is_ok()
    }

    fn skip(&mut self, why: Skip, path: &Path, message: impl std::fmt::Display) -> bool {
        self.emit(Scanned::Skipped(why, path.to_path_buf(), message.to_string()))
    }

    /// Walks directory `dir` (archive path `rel`); false once the receiver is gone.
    fn dir(&mut self, dir: &Path, rel: &[u8]) -> bool {
        let mut entries: Vec<(Vec<u8>, fs::DirEntry)> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| (e.file_name().as_bytes().to_vec(), e))
                .collect(),
            Err(e) => return self.skip(Skip::Unreadable, dir, format!("cannot list directory: {e}")),
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, dirent) in entries {
            let path = dir.join(OsStr::from_bytes(&name));
            let rel_path = if rel.is_empty() {
                name
            } else {
                [rel, b"/", &name].concat()
            };
            // DirEntry::metadata is an fstatat() relative to the open
            // directory that does not follow symlinks.
            let meta = match dirent.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // gone since the listing
                Err(e) => {
                    if !self.skip(Skip::Unreadable, &path, e) {
                        return false;
                    }
                    continue;
                }
            };
            let excluded = !self.scan.exclude.is_empty()
                && self
                    .scan
                    .exclude
                    .matched_path_or_any_parents(Path::new(OsStr::from_bytes(&rel_path)), meta.is_dir())
                    .is_ignore();
            let go_on = if excluded {
                self.skip(Skip::Excluded, &path, "")
            } else {
                self.entry(path, rel_path, &meta)
            };
            if !go_on {
                return false;
            }
        }
        true
    }

    fn entry(&mut self, path: PathBuf, rel: Vec<u8>, meta: &fs::Metadata) -> bool {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_char_device() {
            EntryKind::CharDev
        } else if ft.is_block_device() {
            EntryKind::BlockDev
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            EntryKind::Socket
        };
        let mut e = entry_from(rel, meta, kind);
        if kind != EntryKind::File {
            e.xattrs = read_xattrs(&path);
        }
        match kind {
            EntryKind::Symlink => match fs::read_link(&path) {
                Ok(t) => e.target = t.as_os_str().as_bytes().to_vec(),
                Err(err) => return self.skip(Skip::Unreadable, &path, err),
            },
            EntryKind::CharDev | EntryKind::BlockDev => e.rdev = meta.rdev(),
            EntryKind::File if meta.nlink() > 1 => {
                if let Some(first) = self.hardlinks.get(&(meta.dev(), meta.ino())) {
                    e.kind = EntryKind::Hardlink;
                    e.target = first.clone();
                } else {
                    self.hardlinks.insert((meta.dev(), meta.ino()), e.path.clone());
                }
            }
            _ => {}
        }
        if let Err(why) = fits_format(&e) {
            return self.skip(Skip::Unreadable, &path, why);
        }
        if kind != EntryKind::Dir {
            if self.scan.hint_contents && e.kind == EntryKind::File && e.size > 0 {
                hint_contents(&path, e.size);
            }
            return self.emit(Scanned::Entry(e, path));
        }
        let rel = e.path.clone();
        if !self.emit(Scanned::Entry(e, path.clone())) {
            return false;
        }
        let other_fs = meta.dev() != self.root_dev;
        if other_fs && self.scan.one_file_system && !self.scan.include_mounts.contains(&path) {
            return self.skip(
                Skip::OtherFileSystem,
                &path,
                "other file system, not crossed (--include-mount to include it)",
            );
        }
        self.dir(&path, &rel)
    }
}

/// Bytes of each file the walk asks the kernel to start reading.
const HINT_BYTES: u64 = 1 << 20;

/// Starts reading the head of a file the backup will read soon. The backup
/// reads files one at a time, each waiting for the disk; the walk runs up
/// to thousands of entries ahead, so with these hints the disk has many
/// reads queued, as it has for one large file through the kernel's own
/// read-ahead (which takes over beyond [`HINT_BYTES`]). A hint that fails
/// costs nothing but the hint.
fn hint_contents(path: &Path, size: u64) {
    // O_NONBLOCK: if the file was replaced by a FIFO since its lstat, the
    // open must not wait for a writer.
    let open = |flags| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | flags)
            .open(path)
    };
    let Ok(file) = open(libc::O_NOATIME).or_else(|_| open(0)) else {
        return;
    };
    // SAFETY: an advice call on a descriptor we own; it changes no memory.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            size.min(HINT_BYTES) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

fn entry_from(path: Vec<u8>, m: &fs::Metadata, kind: EntryKind) -> Entry {
    let mut e = Entry::new(path, kind);
    e.mode = m.mode() & 0o7777;
    e.uid = m.uid();
    e.gid = m.gid();
    e.mtime = Time {
        sec: m.mtime(),
        nsec: m.mtime_nsec() as u32,
    };
    e.ctime = Time {
        sec: m.ctime(),
        nsec: m.ctime_nsec() as u32,
    };
    e.inode = m.ino();
    if kind == EntryKind::File {
        e.size = m.len();
    }
    e
}
/// Extended attributes of `path` (not following symlinks), sorted by name,
/// within the format's limits (Linux's own: 255-byte names, 64 KiB values).
/// Attributes that cannot be read are skipped.
pub(crate) fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    // Most files have none: ask for the size first, allocate only then.
    // SAFETY: c is a valid C string; a zero size asks for the length only.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; len as usize + 256];
    // SAFETY: c is a valid C string; the buffer length is passed with it.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else { continue };
        let mut value = vec![0u8; super::MAX_XATTR_VALUE];
        // SAFETY: valid C strings; the buffer length is passed with it.
        let v = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if v >= 0 && name.len() <= super::MAX_XATTR_NAME {
            value.truncate(v as usize);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out.truncate(super::MAX_XATTRS);
    out
}
