//! Backing up a file tree as a tree archive.
//!
//! The tree is walked depth-first, children sorted by name bytes, never
//! following symlinks. Metadata records and file contents go to two chunked
//! streams. With a previous archive of the same group, a regular file whose
//! size, mtime, ctime and inode are unchanged is not read: the payload chunks
//! that hold it in the previous archive are referenced again (whole chunks;
//! bytes of neighbouring files that share them are the "reuse waste").

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::scan::{self, read_xattrs, Scan, Scanned, Skip};
use super::stream::StreamReader;
use super::{encode_entry, encode_header_for, path_cmp, Entry, EntryKind, EntryReader, Time};
use crate::chunking::cdc::CdcParams;
use crate::format::chunk::Compression;
use crate::format::dynamic_index::DynamicIndex;
use crate::format::snapshot::{ArchiveEntry, ArchiveKind, ArchiveStats, StreamRecord, TreeStats};
use crate::pipeline::options::{BackupError, BackupOptions};
use crate::pipeline::stream::StreamOut;
use crate::progress::Progress;
use crate::store::ChunkSink;
use crate::store::Repository;

/// One tree to back up under archive name `name` (`NAME.tree`).
pub struct TreeInput {
    pub name: String,
    pub root: PathBuf,
    /// gitignore-style patterns, matched against paths relative to the root.
    pub exclude: Vec<String>,
    /// Do not descend into other file systems (mount points are archived as
    /// empty directories)...
    pub one_file_system: bool,
    /// ...except these mount points.
    pub include_mounts: Vec<PathBuf>,
    /// Read every file even when the previous archive has it unchanged.
    pub full_read: bool,
    pub cdc: CdcParams,
    /// Recorded in the manifest as the archive's `source` when the root is
    /// not what a user would recognise (a snapshot of the volume); None:
    /// the root.
    pub origin: Option<String>,
}

/// The previous archive of the same tree: its metadata and payload streams.
pub(crate) struct Previous<'a> {
    pub meta: StreamReader<'a>,
    pub payload: DynamicIndex,
}

/// What backing up a tree produced.
pub(crate) struct TreeResult {
    pub meta: StreamRecord,
    pub payload: StreamRecord,
    pub stats: ArchiveStats,
    pub tree: TreeStats,
    pub warnings: Vec<String>,
}

/// Backs up `input` into `meta_path` and `payload_path` (both `.didx`).
pub(crate) fn back_up_tree(
    input: &TreeInput,
    writer: &dyn ChunkSink,
    compression: Compression,
    previous: Option<Previous>,
    paths: (&Path, &Path),
    progress: &dyn Progress,
) -> Result<TreeResult, BackupError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { path, source }
    };
    let root_meta = fs::symlink_metadata(&input.root).map_err(io_err(&input.root))?;
    if !root_meta.is_dir() {
        return Err(BackupError::Io {
            path: input.root.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    let exclude = build_excludes(&input.root, &input.exclude)?;
    let threads = crate::worker_threads(0);
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded(16);
        let scan = Scan {
            root: &input.root,
            root_meta,
            exclude: &exclude,
            one_file_system: input.one_file_system,
            include_mounts: &input.include_mounts,
            hint_contents: previous.is_none() || input.full_read,
        };
        std::thread::Builder::new()
            .name("hoard-scan".into())
            .spawn_scoped(scope, move || scan::scan(&scan, tx))
            .map_err(|source| BackupError::Io {
                path: input.root.clone(),
                source,
            })?;
        let mut w = Walker {
            input,
            writer,
            meta: StreamOut::new(scope, paths.0, input.cdc, writer, compression, 1)?,
            payload: StreamOut::new(scope, paths.1, input.cdc, writer, compression, threads)?,
            previous: previous.map(|p| PrevCursor {
                entries: EntryReader::new(p.meta).ok(),
                pending: None,
                payload: p.payload,
            }),
            run: None,
            mapped: HashMap::new(),
            record: Vec::new(),
            buf: vec![0u8; 1 << 20],
            stats: ArchiveStats::default(),
            tree: TreeStats::default(),
            warnings: Vec::new(),
            progress,
        };
        w.meta_push(&encode_header_for(writer.chunker().is_some()))?;
        for item in rx.iter().flatten() {
            w.scanned(item)?;
        }
        let Walker {
            meta,
            payload,
            mut stats,
            tree,
            warnings,
            ..
        } = w;
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let ctime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let payload = payload.finish(writer, &mut stats, uuid, ctime)?;
        let meta = meta.finish(writer, &mut stats, uuid, ctime)?;
        Ok(TreeResult {
            meta,
            payload,
            stats,
            tree,
            warnings,
        })
    })
}

/// Backs up one tree into snapshot directory `dir`, incrementally against
/// `base` (a directory holding the archive's indexes, and its entry) or by
/// default the newest earlier snapshot of the group that has this archive
/// and did not fail verification; returns its manifest entry and the warnings.
pub(crate) fn archive_tree(
    store: &dyn Repository,
    writer: &dyn ChunkSink,
    opts: &BackupOptions,
    input: &TreeInput,
    dir: &Path,
    base: Option<(&Path, &ArchiveEntry)>,
    progress: &dyn Progress,
) -> Result<(ArchiveEntry, Vec<String>), BackupError> {
    let meta_name = format!("{}.meta.didx", input.name);
    let payload_name = format!("{}.payload.didx", input.name);
    let mut notes = Vec::new();
    let mut previous = match base {
        Some((d, a)) => Some((d.to_path_buf(), a.clone())),
        None => previous_archive(store, opts, input),
    };
    // Reuse references whole chunks, so bytes of deleted or changed files
    // can linger in the payload stream from backup to backup. Past a fifth
    // of it, read everything once: the new stream holds no waste. Not for
    // a given base (the second pass of a suspend backup, which must read
    // only what changed): its first pass made that choice.
    if let (Some((snap_dir, a)), None) = (&previous, base) {
        let payload = a.payload.as_ref().map_or(0, |p| p.size);
        let files = a.tree.as_ref().map_or(0, |t| t.file_bytes);
        if payload > 0 && payload.saturating_sub(files) * 5 > payload {
            notes.push(format!(
                "{}: {:.0}% of the previous payload ({}) is no longer referenced by files: full read to compact it",
                input.name,
                100.0 * payload.saturating_sub(files) as f64 / payload as f64,
                snap_dir.display()
            ));
            previous = None;
        }
    }
    let previous = previous.as_ref().and_then(|(snap_dir, a)| {
        let meta = StreamReader::open(store, &snap_dir.join(&a.index)).ok()?;
        let payload = DynamicIndex::open(&snap_dir.join(&a.payload.as_ref()?.index)).ok()?;
        // The indexes must be the ones the manifest describes.
        let matches = meta.index().header().checksum.to_hex() == a.index_checksum
            && a.payload
                .as_ref()
                .is_some_and(|p| payload.header().checksum.to_hex() == p.index_checksum);
        matches.then_some(Previous { meta, payload })
    });
    if let Some(p) = &previous {
        // Unchanged files and metadata reuse the previous streams' chunks:
        // ask about them in batches up front.
        let (m, d) = (p.meta.index(), &p.payload);
        let meta = (0..m.chunk_count()).map(|i| m.digest(i));
        writer.seed(&mut meta.chain((0..d.chunk_count()).map(|i| d.digest(i))))?;
    }
    progress.begin(&input.name, 0);
    let r = back_up_tree(
        input,
        writer,
        opts.compression,
        previous,
        (&dir.join(&meta_name), &dir.join(&payload_name)),
        progress,
    );
    progress.end();
    let r = r?;
    let entry = ArchiveEntry {
        name: input.name.clone(),
        index: meta_name,
        archive_type: ArchiveKind::Tree,
        size: r.meta.size,
        chunk_size: input.cdc.avg as u64,
        chunk_count: r.meta.chunk_count,
        index_checksum: r.meta.index_checksum,
        bitmap: None,
        payload: Some(StreamRecord {
            index: payload_name,
            ..r.payload
        }),
        tree: Some(r.tree),
        source: Some(
            input
                .origin
                .clone()
                .unwrap_or_else(|| input.root.display().to_string()),
        ),
        stats: r.stats,
    };
    notes.extend(r.warnings);
    Ok((entry, notes))
}

/// The newest earlier snapshot of the group with this tree archive, if it
/// may serve as a base: its directory and archive entry.
fn previous_archive(
    store: &dyn Repository,
    opts: &BackupOptions,
    input: &TreeInput,
) -> Option<(PathBuf, ArchiveEntry)> {
    let catalog = store.catalogue();
    catalog.newest_base((opts.kind, &opts.id), &input.name, |n, a| {
        (a.archive_type == ArchiveKind::Tree && a.chunk_size == input.cdc.avg as u64)
            .then(|| (catalog.dir(n), a.clone()))
    })
}

fn build_excludes(root: &Path, patterns: &[String]) -> Result<Gitignore, BackupError> {
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p).map_err(|e| BackupError::Io {
            path: PathBuf::from(p),
            source: io::Error::new(io::ErrorKind::InvalidInput, format!("bad --exclude pattern: {e}")),
        })?;
    }
    b.build().map_err(|e| BackupError::Io {
        path: root.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
    })
}

/// Walks the previous archive's entries in step with the new walk.
struct PrevCursor<'a> {
    entries: Option<EntryReader<StreamReader<'a>>>,
    pending: Option<Entry>,
    payload: DynamicIndex,
}

impl PrevCursor<'_> {
    /// The previous entry at `path`, if any. Paths must be asked in
    /// increasing order; a damaged previous archive just ends reuse.
    fn find(&mut self, path: &[u8]) -> Option<Entry> {
        loop {
            if self.pending.is_none() {
                self.pending = self.entries.as_mut()?.next_entry().unwrap_or_else(|_| {
                    self.entries = None;
                    None
                });
                self.pending.as_ref()?;
            }
            let p = self.pending.as_ref()?;
            match path_cmp(&p.path, path) {
                std::cmp::Ordering::Less => self.pending = None,
                std::cmp::Ordering::Equal => return self.pending.take(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }
}

/// Previous payload chunks referenced again, contiguous: `first..next` of
/// the previous index, chunk `first` starting at `new_start` in the new stream.
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    next: u64,
    new_start: u64,
}

struct Walker<'a, 'p> {
    input: &'a TreeInput,
    writer: &'a dyn ChunkSink,
    meta: StreamOut,
    payload: StreamOut,
    previous: Option<PrevCursor<'p>>,
    run: Option<Run>,
    /// Previous payload chunks referenced so far → their start in the new
    /// stream (a few bytes per chunk of the reused data).
    mapped: HashMap<u64, u64>,
    record: Vec<u8>,
    buf: Vec<u8>,
    stats: ArchiveStats,
    tree: TreeStats,
    warnings: Vec<String>,
    progress: &'a dyn Progress,
}

impl Walker<'_, '_> {
    fn warn(&mut self, path: &Path, what: impl std::fmt::Display) {
        self.warnings.push(format!("{}: {what}", path.display()));
    }

    fn meta_push(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.meta.push(data, self.writer, &mut self.stats)
    }

    fn payload_push(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.run = None;
        self.payload.push(data, self.writer, &mut self.stats)
    }

    fn add(&mut self, e: Entry) -> Result<(), BackupError> {
        self.tree.entries += 1;
        self.record.clear();
        encode_entry(&e, &mut self.record);
        let rec = std::mem::take(&mut self.record);
        let r = self.meta_push(&rec);
        self.record = rec;
        r
    }

    /// Archives one thing the walk found.
    fn scanned(&mut self, item: Scanned) -> Result<(), BackupError> {
        if crate::signals::pending() {
            return Err(BackupError::Interrupted);
        }
        let (mut e, path) = match item {
            Scanned::Entry(e, path) => (e, path),
            Scanned::Skipped(Skip::Excluded, ..) => {
                self.tree.excluded += 1;
                return Ok(());
            }
            Scanned::Skipped(why, path, message) => {
                match why {
                    Skip::OtherFileSystem => self.tree.mounts_skipped += 1,
                    _ => self.tree.unreadable += 1,
                }
                self.warn(&path, message);
                return Ok(());
            }
        };
        if e.kind == EntryKind::File {
            if !self.file_payload(&path, &mut e)? {
                return Ok(());
            }
            self.tree.files += 1;
            self.tree.file_bytes += e.size;
            self.progress.entry();
        }
        self.add(e)
    }

    /// Puts a regular file's contents into the payload stream, reused from
    /// the previous archive when unchanged; false if it could not be read.
    fn file_payload(&mut self, path: &Path, e: &mut Entry) -> Result<bool, BackupError> {
        let prev = self.previous.as_mut().and_then(|p| p.find(&e.path));
        if !self.input.full_read {
            if let Some(prev) = prev.filter(|p| {
                p.kind == EntryKind::File
                    && p.size == e.size
                    && p.mtime == e.mtime
                    && p.ctime == e.ctime
                    && p.inode == e.inode
            }) {
                if let Some(offset) = self.reuse(&prev)? {
                    e.payload_offset = offset;
                    e.xattrs = prev.xattrs;
                    self.tree.reused_files += 1;
                    self.tree.reused_file_bytes += e.size;
                    self.progress.advance(e.size);
                    return Ok(true);
                }
            }
        }
        e.xattrs = read_xattrs(path);
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
            .open(path)
            .or_else(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
            });
        let mut file: File = match file {
            Ok(f) => f,
            Err(err) => {
                self.tree.unreadable += 1;
                self.warn(path, format!("cannot read: {err}"));
                return Ok(false);
            }
        };
        e.payload_offset = self.payload.pos();
        let mut total = 0u64;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let n = match file.read(&mut buf) {
                Ok(0) => {
                    self.buf = buf;
                    break;
                }
                Ok(n) => {
                    crate::throttle::charge(n);
                    n
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    self.buf = buf;
                    continue;
                }
                Err(err) => {
                    self.buf = buf;
                    // Bytes already in the stream stay, unreferenced.
                    self.tree.unreadable += 1;
                    self.warn(path, format!("read failed after {total} bytes: {err}"));
                    return Ok(false);
                }
            };
            let r = self.payload_push(&buf[..n]);
            self.buf = buf;
            r?;
            if crate::signals::pending() {
                return Err(BackupError::Interrupted);
            }
            total += n as u64;
            self.stats.bytes_read += n as u64;
            self.progress.advance(n as u64);
        }
        crate::failpoint::pause("tree-after-file-read");
        let after = file.metadata().ok();
        let changed = total != e.size
            || after.is_none_or(|a| {
                a.len() != e.size
                    || a.mtime() != e.mtime.sec
                    || a.ctime() != e.ctime.sec
                    || a.ctime_nsec() as u32 != e.ctime.nsec
            });
        if changed {
            self.tree.changed_while_read += 1;
            self.warn(
                path,
                format!("changed while being read ({} bytes archived as read)", total),
            );
            e.size = total;
            // Never reuse a torn copy: the next backup reads it again.
            e.ctime = Time::default();
        }
        Ok(true)
    }

    /// References the previous archive's payload chunks of `prev` again;
    /// returns the file's offset in the new payload stream, or None if a
    /// chunk is no longer in the store (then the file is read).
    fn reuse(&mut self, prev: &Entry) -> Result<Option<u64>, BackupError> {
        let pos = self.payload.pos();
        if prev.size == 0 {
            return Ok(Some(pos));
        }
        let p = &self
            .previous
            .as_ref()
            .expect("reuse needs a previous archive")
            .payload;
        let (Some(first), Some(last)) = (
            p.chunk_at(prev.payload_offset),
            p.chunk_at(prev.payload_offset + prev.size - 1),
        ) else {
            return Ok(None); // the previous archive points past its payload
        };
        let in_chunk = prev.payload_offset - p.start(first);
        // Already in the new stream, contiguous (typically: a small file in
        // a chunk referenced for its neighbours): point there.
        if let Some(&start) = self.mapped.get(&first) {
            let contiguous = (first..last).all(|j| {
                let (a, b) = (self.mapped.get(&j), self.mapped.get(&(j + 1)));
                matches!((a, b), (Some(a), Some(b)) if *b == *a + (p.end(j) - p.start(j)))
            });
            if contiguous {
                return Ok(Some(start + in_chunk));
            }
        }
        // A file that starts inside (or right after) the chunks just reused
        // continues that run.
        let continues = self.run.filter(|r| r.first <= first && first <= r.next);
        if continues.is_none()
            && self.mapped.contains_key(&first)
            && prev.size < p.end(first) - p.start(first)
        {
            // Restarting here would reference chunk `first` a second time for
            // less than a chunk of this file: reading it is cheaper, and keeps
            // the waste from growing backup after backup.
            return Ok(None);
        }
        let from = continues.map_or(first, |r| r.next);
        let mut chunks = Vec::new();
        for i in from..=last {
            let d = p.digest(i);
            if !self.writer.is_known(&d)? {
                return Ok(None);
            }
            chunks.push((i, p.end(i) - p.start(i), d));
        }
        let run = match continues {
            Some(r) => r,
            None => {
                // Reused chunks start at a chunk boundary of the new stream.
                self.payload.flush(self.writer, &mut self.stats)?;
                Run {
                    first,
                    next: first,
                    new_start: self.payload.pos(),
                }
            }
        };
        for (i, len, d) in chunks {
            self.mapped.insert(i, self.payload.pos());
            self.payload.inject(len, &d)?;
            self.stats.reused_chunks += 1;
            self.stats.reused_bytes += len;
            self.tree.reused_chunk_bytes += len;
        }
        let p = &self.previous.as_ref().expect("checked above").payload;
        let offset = run.new_start + (prev.payload_offset - p.start(run.first));
        self.run = Some(Run {
            next: run.next.max(last + 1),
            ..run
        });
        Ok(Some(offset))
    }
}
