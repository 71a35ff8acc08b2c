//! Restoring a tree archive into a directory.
//!
//! An archive is untrusted input. Besides what the metadata parser refuses
//! (absolute paths, `..`, entries out of order), every file system operation
//! here is relative to a directory opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` below the target: a symlink restored earlier, or a
//! directory an attacker turned into one, is never followed, and nothing is
//! created or written outside the target. Directory metadata (mode, owner,
//! times) is applied last, deepest first, so that a read-only directory
//! still receives its contents.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::at;
use super::stream::{StreamError, StreamReader};
use super::{is_within, parent_of, ArchiveError, Entry, EntryKind, EntryReader};
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::snapshot::ArchiveEntry;
use crate::progress::Progress;
use crate::store::Repository;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("refusing {path}: {reason}")]
    Unsafe { path: String, reason: String },
    #[error("{0}: target directory is not empty (use --force to restore into it)")]
    NotEmpty(PathBuf),
    #[error("{archive}: {what} does not match the manifest (index damaged or replaced)")]
    IndexMismatch { archive: String, what: String },
    #[error("bad --exclude pattern: {0}")]
    Pattern(String),
}

impl Classify for ExtractError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExtractError::Archive(e) => e.kind(),
            ExtractError::Stream(e) => e.kind(),
            ExtractError::Io { source, .. } => io_kind(source),
            ExtractError::Unsafe { .. } | ExtractError::IndexMismatch { .. } => ErrorKind::Damaged,
            ExtractError::NotEmpty(_) | ExtractError::Pattern(_) => ErrorKind::Invalid,
        }
    }

    fn context(&self) -> Context {
        match self {
            ExtractError::Archive(e) => e.context(),
            ExtractError::Stream(e) => e.context(),
            ExtractError::Io { path, .. } | ExtractError::Unsafe { path, .. } => Context::path(path.as_ref()),
            ExtractError::NotEmpty(path) => Context::path(path),
            _ => Context::default(),
        }
    }
}

pub struct ExtractOptions {
    /// Restore into a non-empty directory, replacing files of the same name.
    pub force: bool,
    /// Only these paths (and what is below them); empty: everything.
    pub include: Vec<Vec<u8>>,
    /// gitignore-style patterns of paths not to restore.
    pub exclude: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ExtractReport {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Entries skipped because restoring them needs root (device nodes,
    /// ownership is simply not applied).
    pub skipped_need_root: u64,
    /// `--include` paths that name no entry of the archive.
    pub unmatched_includes: Vec<String>,
}

/// Restores `archive` of the snapshot in `snap_dir` into `target`.
pub fn extract(
    store: &dyn Repository,
    snap_dir: &Path,
    archive: &ArchiveEntry,
    target: &Path,
    opts: &ExtractOptions,
    progress: &dyn Progress,
) -> crate::Result<ExtractReport> {
    let _reading = store.hold_reads(&format!("restore {}", archive.name));
    let (meta, payload) = open_streams(store, snap_dir, archive)?;
    let exclude = excludes(target, &opts.exclude)?;
    prepare_target(target, opts.force)?;
    let root = open_dir_path(target)?;
    let mut x = Extractor {
        root,
        target: target.to_path_buf(),
        force: opts.force,
        is_root: at::is_root(),
        parent: None,
        dirs: Vec::new(),
        report: ExtractReport::default(),
    };
    progress.begin(&archive.name, archive.payload.as_ref().map_or(0, |p| p.size));
    std::thread::scope(|scope| {
        let mut payload = payload;
        // Chunks are verified and decompressed on all cores ahead of the
        // writes, which go in stream order.
        payload.read_ahead(scope, store, crate::worker_threads(0), 32);
        let mut entries = EntryReader::new(meta)?;
        let mut matched = vec![false; opts.include.len()];
        while let Some(e) = entries.next_entry()? {
            for (m, inc) in matched.iter_mut().zip(&opts.include) {
                *m |= is_within(&e.path, inc);
            }
            if !wanted(&e, &opts.include, &exclude) {
                continue;
            }
            x.restore(&e, &mut payload, progress)?;
        }
        x.report.unmatched_includes = opts
            .include
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(inc, _)| String::from_utf8_lossy(inc).into_owned())
            .collect();
        x.finish_dirs()?;
        progress.end();
        Ok(x.report)
    })
}

/// Opens both streams after checking their indexes against the manifest.
pub fn open_streams<'a>(
    store: &'a dyn Repository,
    snap_dir: &Path,
    a: &ArchiveEntry,
) -> Result<(StreamReader<'a>, StreamReader<'a>), ExtractError> {
    let mismatch = |what: &str| ExtractError::IndexMismatch {
        archive: a.name.clone(),
        what: what.into(),
    };
    let p = a.payload.as_ref().ok_or_else(|| mismatch("payload stream"))?;
    store
        .require_key("reading a tree archive")
        .map_err(|e| ExtractError::Stream(e.into()))?;
    let meta = StreamReader::open(store, &snap_dir.join(&a.index))?;
    let payload = StreamReader::open(store, &snap_dir.join(&p.index))?;
    if meta.index().header().checksum.to_hex() != a.index_checksum || meta.size() != a.size {
        return Err(mismatch("metadata index"));
    }
    if payload.index().header().checksum.to_hex() != p.index_checksum || payload.size() != p.size {
        return Err(mismatch("payload index"));
    }
    Ok((meta, payload))
}

fn excludes(target: &Path, patterns: &[String]) -> Result<Gitignore, ExtractError> {
    let mut b = GitignoreBuilder::new(target);
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| ExtractError::Pattern(e.to_string()))?;
    }
    b.build().map_err(|e| ExtractError::Pattern(e.to_string()))
}

/// Whether an entry is restored under `--include`/`--exclude`. Directories
/// on the way to an included path are restored too.
pub(crate) fn wanted(e: &Entry, include: &[Vec<u8>], exclude: &Gitignore) -> bool {
    let included = include.is_empty()
        || include
            .iter()
            .any(|inc| is_within(&e.path, inc) || (e.kind == EntryKind::Dir && is_within(inc, &e.path)));
    if !included {
        return false;
    }
    if e.path.is_empty() {
        return true;
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(&e.path));
    !exclude
        .matched_path_or_any_parents(p, e.kind == EntryKind::Dir)
        .is_ignore()
}

fn prepare_target(target: &Path, force: bool) -> Result<(), ExtractError> {
    let io = |source| ExtractError::Io {
        path: target.display().to_string(),
        source,
    };
    match std::fs::read_dir(target) {
        Ok(mut rd) => {
            if rd.next().is_some() && !force {
                return Err(ExtractError::NotEmpty(target.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(target).map_err(io),
        Err(e) => Err(io(e)),
    }
}

fn open_dir_path(p: &Path) -> Result<OwnedFd, ExtractError> {
    let c = cstr(p.as_os_str().as_encoded_bytes(), &p.display().to_string())?;
    at::open_dir(&c).map_err(|source| ExtractError::Io {
        path: p.display().to_string(),
        source,
    })
}

fn cstr(b: &[u8], what: &str) -> Result<CString, ExtractError> {
    CString::new(b).map_err(|_| ExtractError::Unsafe {
        path: what.into(),
        reason: "name contains NUL".into(),
    })
}

/// Opens directory `rel` below `root` without following any symlink and
/// without leaving `root`.
fn open_beneath(root: &OwnedFd, rel: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() {
        b".".to_vec()
    } else {
        rel.to_vec()
    };
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    at::open_beneath(root.as_fd(), &c, flags)
}

struct Extractor {
    root: OwnedFd,
    target: PathBuf,
    force: bool,
    is_root: bool,
    /// The last parent directory opened, reused by its next children.
    parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directories whose metadata is applied at the end.
    dirs: Vec<Entry>,
    report: ExtractReport,
}

impl Extractor {
    fn err(&self, e: &Entry) -> impl Fn(io::Error) -> ExtractError {
        let path = self
            .target
            .join(std::ffi::OsStr::from_bytes(&e.path))
            .display()
            .to_string();
        move |source| ExtractError::Io {
            path: path.clone(),
            source,
        }
    }

    fn parent_fd(&mut self, e: &Entry) -> Result<(Rc<OwnedFd>, CString), ExtractError> {
        let parent = parent_of(&e.path).to_vec();
        if self.parent.as_ref().map(|p| &p.0) != Some(&parent) {
            let fd = open_beneath(&self.root, &parent, OFlag::O_DIRECTORY | OFlag::O_PATH).map_err(|source| {
                ExtractError::Unsafe {
                    path: e.display(),
                    reason: format!("its directory cannot be reached without leaving the target or following a symlink ({source})"),
                }
            })?;
            self.parent = Some((parent, Rc::new(fd)));
        }
        let name = e.path.rsplit(|b| *b == b'/').next().unwrap_or(&e.path);
        let fd = self.parent.as_ref().expect("set above").1.clone();
        Ok((fd, cstr(name, &e.display())?))
    }

    fn restore(
        &mut self,
        e: &Entry,
        payload: &mut StreamReader,
        progress: &dyn Progress,
    ) -> Result<(), ExtractError> {
        self.report.entries += 1;
        if e.path.is_empty() {
            self.dirs.push(e.clone());
            return Ok(());
        }
        let (dir, name) = self.parent_fd(e)?;
        let dir = dir.as_fd();
        let err = self.err(e);
        if self.force && e.kind != EntryKind::Dir {
            // Replace a non-directory of the same name; a directory stays
            // (unlinkat without AT_REMOVEDIR refuses it).
            at::unlink(dir, &name).map_err(&err)?;
        }
        match e.kind {
            EntryKind::Dir => {
                if let Err(e2) = at::mkdir(dir, &name) {
                    let is_dir =
                        open_beneath(&self.root, &e.path, OFlag::O_DIRECTORY | OFlag::O_PATH).is_ok();
                    if !(e2.kind() == io::ErrorKind::AlreadyExists && is_dir) {
                        return Err(err(e2));
                    }
                }
                self.dirs.push(e.clone());
            }
            EntryKind::File => {
                if e.payload_offset.saturating_add(e.size) > payload.size() {
                    return Err(ExtractError::Unsafe {
                        path: e.display(),
                        reason: "its contents lie outside the payload stream".into(),
                    });
                }
                let file = File::from(at::create_file(dir, &name).map_err(&err)?);
                self.write_contents(&file, e, payload, progress)
                    .map_err(|x| match x {
                        ExtractError::Io { source, .. } => err(source),
                        x => x,
                    })?;
                at::apply_fd(file.as_fd(), e, self.is_root).map_err(&err)?;
                self.report.files += 1;
            }
            EntryKind::Symlink => {
                let target = cstr(&e.target, &e.display())?;
                at::symlink(&target, dir, &name).map_err(&err)?;
                at::apply_at(dir, &name, e, self.is_root, false).map_err(&err)?;
            }
            EntryKind::Hardlink => {
                let target = open_beneath(
                    &self.root,
                    parent_of(&e.target),
                    OFlag::O_DIRECTORY | OFlag::O_PATH,
                )
                .map_err(|source| ExtractError::Unsafe {
                    path: e.display(),
                    reason: format!("hardlink target directory unreachable ({source})"),
                })?;
                let tname = e.target.rsplit(|b| *b == b'/').next().unwrap_or(&e.target);
                let tname = cstr(tname, &e.display())?;
                if !at::is_regular_file(target.as_fd(), &tname) {
                    return Err(ExtractError::Unsafe {
                        path: e.display(),
                        reason: "hardlink target is not a regular file restored from this archive".into(),
                    });
                }
                at::hard_link(target.as_fd(), &tname, dir, &name).map_err(&err)?;
                self.report.files += 1;
            }
            EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo | EntryKind::Socket => {
                let t = match e.kind {
                    EntryKind::CharDev => SFlag::S_IFCHR,
                    EntryKind::BlockDev => SFlag::S_IFBLK,
                    EntryKind::Fifo => SFlag::S_IFIFO,
                    _ => SFlag::S_IFSOCK,
                };
                let device = matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev);
                if device && !self.is_root {
                    self.report.skipped_need_root += 1;
                    return Ok(());
                }
                at::make_node(dir, &name, t, e.rdev).map_err(&err)?;
                // The node was just made by mknodat: not a symlink.
                at::apply_at(dir, &name, e, self.is_root, true).map_err(&err)?;
            }
        }
        Ok(())
    }

    /// Writes a file's contents; runs of zero blocks become holes.
    fn write_contents(
        &mut self,
        file: &File,
        e: &Entry,
        payload: &mut StreamReader,
        progress: &dyn Progress,
    ) -> Result<(), ExtractError> {
        let mut done = 0u64;
        // The file is new: its size is the end of the last write.
        let mut written_end = 0u64;
        while done < e.size {
            // Straight from the decoded chunk: no copy on the way.
            let data = payload.slice_at(e.payload_offset + done)?;
            let n = (e.size - done).min(data.len() as u64) as usize;
            if n == 0 {
                return Err(ExtractError::Unsafe {
                    path: e.display(),
                    reason: "payload stream ended early".into(),
                });
            }
            // Each run of non-zero 4 KiB blocks (of the file) is one write;
            // zero blocks are skipped and stay holes.
            let data = &data[..n];
            let block_end = |at: usize| {
                let next = ((done + at as u64) / 4096 + 1) * 4096;
                ((next - done) as usize).min(n)
            };
            let mut at = 0;
            while at < n {
                let start = at;
                while at < n && !crate::chunking::digest::is_zero(&data[at..block_end(at)]) {
                    at = block_end(at);
                }
                if at > start {
                    file.write_all_at(&data[start..at], done + start as u64)
                        .map_err(|source| ExtractError::Io {
                            path: e.display(),
                            source,
                        })?;
                    written_end = done + at as u64;
                }
                while at < n && crate::chunking::digest::is_zero(&data[at..block_end(at)]) {
                    at = block_end(at);
                }
            }
            done += n as u64;
            progress.advance(n as u64);
            // --bwlimit paces what a restore reads from the store; here, not
            // in the stream reader, which backups use for their base too.
            crate::throttle::charge(n);
        }
        if written_end < e.size {
            // A hole at the end.
            file.set_len(e.size).map_err(|source| ExtractError::Io {
                path: e.display(),
                source,
            })?;
        }
        self.report.bytes += e.size;
        Ok(())
    }

    /// Directory metadata, deepest first.
    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        self.parent = None;
        let dirs = std::mem::take(&mut self.dirs);
        for e in dirs.iter().rev() {
            let fd = open_beneath(&self.root, &e.path, OFlag::O_DIRECTORY | OFlag::O_RDONLY)
                .map_err(self.err(e))?;
            at::apply_fd(fd.as_fd(), e, self.is_root).map_err(self.err(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{encode_entry, encode_header, Entry, EntryKind};
    use crate::chunking::chunker::ChunkSize;
    use crate::chunking::digest::Digest;
    use crate::format::chunk::{ChunkEncoder, Compression};
    use crate::format::dynamic_index::DidxWriter;
    use crate::format::snapshot::{ArchiveStats, StreamRecord};
    use crate::progress::NoProgress;
    use crate::store::backup_session::BackupSession;
    use crate::store::{ChunkSink, Store};

    /// Stores hand-made metadata and payload streams as an archive, the way
    /// an attacker who controls a store would.
    fn crafted(store: &Store, dir: &Path, meta: &[u8], payload: &[u8]) -> ArchiveEntry {
        let writer = BackupSession::begin(store, "test").unwrap();
        let mut enc = ChunkEncoder::new(Compression::None).unwrap();
        let mut stream = |name: &str, bytes: &[u8]| {
            let mut w = DidxWriter::create(&dir.join(name)).unwrap();
            if !bytes.is_empty() {
                let d = Digest::of(bytes);
                writer
                    .add_chunk(d, &enc.encode(bytes, d), bytes.len() as u32)
                    .unwrap();
                w.push(bytes.len() as u64, &d).unwrap();
            }
            w.finish([0; 16], 0).unwrap()
        };
        let m = stream("t.tree.meta.didx", meta);
        let p = stream("t.tree.payload.didx", payload);
        writer.flush().unwrap();
        ArchiveEntry {
            name: "t.tree".into(),
            index: "t.tree.meta.didx".into(),
            archive_type: crate::format::snapshot::ArchiveKind::Tree,
            size: m.size,
            chunk_size: 1 << 20,
            chunk_count: m.chunk_count,
            index_checksum: m.checksum.to_hex(),
            bitmap: None,
            payload: Some(StreamRecord {
                index: "t.tree.payload.didx".into(),
                size: p.size,
                chunk_count: p.chunk_count,
                index_checksum: p.checksum.to_hex(),
            }),
            tree: None,
            source: None,
            stats: ArchiveStats::default(),
        }
    }

    fn stream(entries: &[Entry]) -> Vec<u8> {
        let mut s = encode_header().to_vec();
        for e in entries {
            encode_entry(e, &mut s);
        }
        s
    }

    fn file(path: &[u8], size: u64, offset: u64) -> Entry {
        let mut e = Entry::new(path.to_vec(), EntryKind::File);
        e.mode = 0o644;
        e.size = size;
        e.payload_offset = offset;
        e
    }

    #[test]
    fn malicious_archives_write_nothing_outside_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::init(&tmp.path().join("s"), ChunkSize::new(65536).unwrap()).unwrap();
        let root = Entry::new(Vec::new(), EntryKind::Dir);
        let mut dir_d = Entry::new(b"d".to_vec(), EntryKind::Dir);
        dir_d.mode = 0o755;
        let mut up = Entry::new(b"up".to_vec(), EntryKind::Symlink);
        up.target = b"..".to_vec();
        let mut hl = Entry::new(b"z".to_vec(), EntryKind::Hardlink);
        hl.target = b"up".to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dot-dot path", stream(&[root.clone(), file(b"../escaped", 4, 0)])),
            ("absolute path", stream(&[root.clone(), file(b"/escaped", 4, 0)])),
            (
                "inner dot-dot",
                stream(&[root.clone(), dir_d.clone(), file(b"d/../../escaped", 4, 0)]),
            ),
            // A symlink to .. and then a file below it: its parent is no
            // directory of the archive.
            (
                "through a symlink",
                stream(&[root.clone(), up.clone(), file(b"up/escaped", 4, 0)]),
            ),
            // A hardlink whose target is that symlink.
            ("hardlink to a symlink", stream(&[root.clone(), up.clone(), hl])),
            (
                "payload out of range",
                stream(&[root.clone(), file(b"big", 1 << 40, 0)]),
            ),
            (
                "duplicate entry",
                stream(&[root.clone(), file(b"a", 4, 0), file(b"a", 4, 0)]),
            ),
        ];
        for (i, (what, meta)) in cases.into_iter().enumerate() {
            let snap = tmp.path().join(format!("snap{i}"));
            std::fs::create_dir(&snap).unwrap();
            let entry = crafted(&store, &snap, &meta, b"evil");
            let outer = tmp.path().join(format!("outer{i}"));
            let target = outer.join("target");
            std::fs::create_dir_all(&target).unwrap();
            let opts = ExtractOptions {
                force: false,
                include: Vec::new(),
                exclude: Vec::new(),
            };
            let r = extract(&store, &snap, &entry, &target, &opts, &NoProgress);
            let err = r.err().unwrap_or_else(|| panic!("{what}: restored"));
            eprintln!("{what}: {err}");
            let outside: Vec<_> = std::fs::read_dir(&outer)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                outside,
                vec![std::ffi::OsString::from("target")],
                "{what}: wrote outside"
            );
            assert!(!tmp.path().join("escaped").exists(), "{what}");
        }
    }
}
