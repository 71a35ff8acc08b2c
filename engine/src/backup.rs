//! Image backup: hashing workers read the source → one pack writer.
//!
//! ```text
//!  workers: take chunk i, pread it in pieces, zero check and BLAKE3 each
//!           piece while cached, index lookup, zstd for new chunks only
//!                                   │
//!              fidx[i] = digest ◀── writer: append new records to the open
//!                                   pack; seal at PACK_TARGET_SIZE, fsync,
//!                                   commit the pack's entries to the index
//! ```
//! Queues are bounded by bytes in flight, so memory does not grow with the
//! image. The snapshot becomes visible only after every pack it references is
//! sealed and committed and every index file is fsynced: its manifest is
//! renamed into place last.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::archive::create::{archive_tree, TreeInput};
use crate::chunk::{ChunkEncoder, Compression};
use crate::chunker::ChunkSize;
use crate::digest::{is_zero, Digest, ZeroChunks};
use crate::fixed_index::{FidxError, FixedIndex, FixedIndexWriter};
use crate::pack::{PackError, PackWriter, PACK_TARGET_SIZE};
use crate::progress::Progress;
use crate::snapshot::{
    self, ArchiveEntry, ArchiveStats, BitmapRecord, Kind, Manifest, SnapshotError, MANIFEST_FORMAT,
    MANIFEST_VERSION,
};
use crate::source::{read_full, ImageSource};
use crate::store::session::Session;
use crate::store::{ChunkLocation, IndexError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("archive name {0} is given twice")]
    DuplicateArchive(String),
    #[error("{source_name}: read failed at offset {offset}: {error}")]
    SourceRead {
        source_name: String,
        offset: u64,
        error: io::Error,
    },
    #[error("{source_name}: source shrank while being read: expected {expected} bytes at offset {offset}, got {got}")]
    SourceShrank {
        source_name: String,
        offset: u64,
        expected: usize,
        got: usize,
    },
    #[error("{source_name}: source size changed during the backup (was {before} bytes, now {after})")]
    SourceResized {
        source_name: String,
        before: u64,
        after: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Fidx(#[from] FidxError),
    #[error(transparent)]
    Didx(#[from] crate::dynamic_index::DidxError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("backup interrupted")]
    Interrupted,
    /// A step of a backup mode around the read failed.
    #[error("{0}")]
    Step(String),
}

/// vzdump's backup modes, for VMs ([`crate::vm`]) and containers
/// ([`crate::ct`]); each module says what a mode does to its guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stop,
    Suspend,
    Snapshot,
}

impl Mode {
    /// The name recorded in the manifest and passed to hook scripts.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Suspend => "suspend",
            Mode::Snapshot => "snapshot",
        }
    }
}

#[derive(Clone)]
pub struct BackupOptions {
    pub kind: Kind,
    pub id: String,
    pub compression: Compression,
    /// Overrides the store's default chunk size.
    pub chunk_size: Option<ChunkSize>,
    /// Hashing/compression workers; 0 means one per core.
    pub threads: usize,
    /// Recorded in the manifest: the VM/CT backup mode and how it went.
    pub mode: Option<String>,
    pub vm: Option<crate::snapshot::VmRecord>,
    pub ct: Option<crate::snapshot::CtRecord>,
}

impl BackupOptions {
    /// A plain backup of group KIND/ID: zstd level 1, the store's chunk
    /// size, one worker per core, no mode record.
    pub fn new(kind: Kind, id: impl Into<String>) -> BackupOptions {
        BackupOptions {
            kind,
            id: id.into(),
            compression: Compression::Zstd(1),
            chunk_size: None,
            threads: 0,
            mode: None,
            vm: None,
            ct: None,
        }
    }
}

/// One image to back up under archive name `name` (`NAME.img`).
pub struct ImageInput {
    pub name: String,
    pub source: Box<dyn ImageSource>,
    /// What is known about the image before reading it.
    pub plan: ReadPlan,
    /// Recorded in the manifest: the dirty bitmap that tracks changes since
    /// this backup's point in time.
    pub bitmap: Option<BitmapRecord>,
}

impl ImageInput {
    /// An image read whole.
    pub fn full(name: String, source: Box<dyn ImageSource>) -> ImageInput {
        ImageInput {
            name,
            source,
            plan: ReadPlan::default(),
            bitmap: None,
        }
    }
}

/// Chunks that need not be read: known zeros, and chunks unchanged since a
/// previous backup whose index is at hand. Sorted chunk ranges, so memory
/// follows the fragmentation of the map, not the size of the disk.
#[derive(Default)]
pub struct ReadPlan {
    /// Chunks entirely inside extents the source reported as zeros.
    pub zero: ChunkRanges,
    /// The previous backup of the same image (same size and chunk size) and
    /// the chunks that changed since: every other chunk takes its digest from
    /// the previous index unread.
    pub base: Option<(FixedIndex, ChunkRanges)>,
}

/// A sorted set of disjoint chunk ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRanges(Vec<std::ops::Range<u64>>);

impl ChunkRanges {
    /// Chunks that overlap any of the byte extents `(offset, len)` (sorted).
    pub fn touching(extents: impl IntoIterator<Item = (u64, u64)>, chunk_size: ChunkSize) -> ChunkRanges {
        let cs = chunk_size.bytes();
        let mut r = ChunkRanges::default();
        for (offset, len) in extents.into_iter().filter(|e| e.1 > 0) {
            r.push(offset / cs..(offset + len).div_ceil(cs));
        }
        r
    }

    /// Chunks lying entirely inside the byte extents `(offset, len)` (sorted);
    /// the image's short last chunk counts as inside if the extent reaches
    /// the end of the image.
    pub fn inside(
        extents: impl IntoIterator<Item = (u64, u64)>,
        chunk_size: ChunkSize,
        size: u64,
    ) -> ChunkRanges {
        let cs = chunk_size.bytes();
        let mut r = ChunkRanges::default();
        for (offset, len) in extents {
            let end = offset + len;
            let last = if end >= size {
                chunk_size.count(size)
            } else {
                end / cs
            };
            r.push(offset.div_ceil(cs)..last);
        }
        r
    }

    fn push(&mut self, range: std::ops::Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => self.0.push(range),
        }
    }

    pub fn contains(&self, i: u64) -> bool {
        let at = self.0.partition_point(|r| r.end <= i);
        self.0.get(at).is_some_and(|r| r.start <= i)
    }
}

/// Bytes of chunk data allowed to wait in the queue to the writer. With the
/// workers and the writer each holding one chunk (plus its record), this
/// keeps peak RSS near 160 MiB even with 16 MiB chunks; 16 MiB chunks get
/// rendezvous queues.
const QUEUE_BYTES: u64 = 8 * 1024 * 1024;

/// One archive of a snapshot: a disk image or a file tree.
pub enum Input {
    Image(ImageInput),
    Tree(TreeInput),
}

impl Input {
    pub fn name(&self) -> &str {
        match self {
            Input::Image(i) => &i.name,
            Input::Tree(t) => &t.name,
        }
    }
}

/// Backs up `images` as one new snapshot and returns its manifest.
pub fn backup_images(
    store: &Store,
    opts: &BackupOptions,
    images: Vec<ImageInput>,
    progress: &dyn Progress,
) -> Result<Manifest, BackupError> {
    let inputs = images.into_iter().map(Input::Image).collect();
    backup(store, opts, inputs, progress).map(|(m, _)| m)
}

/// Backs up `inputs` as one new snapshot; returns its manifest and the
/// warnings of tree walks (unreadable files, files changed while read).
pub fn backup(
    store: &Store,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    backup_passes(store, opts, inputs, None, progress)
}

/// A container mode's steps around the read of its trees (see
/// [`backup_quiesced`]).
pub trait Quiesce {
    /// Suspend mode: read every tree once before `quiesce`, while it
    /// changes, so that the read after it only looks at what changed.
    fn first_pass(&self) -> bool;
    /// Stops the trees from changing (freezes or stops the container).
    fn quiesce(&mut self) -> Result<(), BackupError>;
    /// Lets them change again; called whenever `quiesce` was called.
    fn resume(&mut self) -> Result<(), BackupError>;
    /// Last word on the manifest before it is written (the times measured).
    fn annotate(&self, manifest: &mut Manifest);
}

/// Backs up `inputs` with `q.quiesce()` before the (final) read of the trees
/// and `q.resume()` after it. With `q.first_pass()`, every tree is first
/// read while it changes, into the snapshot's private `pass1/` directory,
/// and the final read is an incremental against it that reads only what
/// changed: the snapshot holds only that consistent pass.
pub fn backup_quiesced(
    store: &Store,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    q: &mut dyn Quiesce,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    backup_passes(store, opts, inputs, Some(q), progress)
}

fn backup_passes(
    store: &Store,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    mut quiesce: Option<&mut dyn Quiesce>,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    let started = Instant::now();
    snapshot::validate_id(&opts.id)?;
    let mut seen = HashSet::new();
    for input in &inputs {
        let name = input.name();
        snapshot::validate_archive_name(name)?;
        let kind_ok = matches!(input, Input::Tree(_)) == snapshot::is_tree(name);
        if !kind_ok {
            return Err(BackupError::Snapshot(SnapshotError::BadArchiveName(name.into())));
        }
        if !seen.insert(name.to_string()) {
            return Err(BackupError::DuplicateArchive(name.into()));
        }
    }
    let chunk_size = opts.chunk_size.unwrap_or_else(|| store.default_chunk_size());
    // Registered for the whole run, so that maintenance knows a backup is in
    // flight; the index view is refreshed after registering.
    let _session = Session::register(store.root(), &format!("backup {}/{}", opts.kind, opts.id))?;
    store.index().refresh()?;
    let (name, dir) = store.catalog().create(opts.kind, &opts.id)?;
    let writer = ChunkWriter::new(store);
    let result = (|| {
        let mut archives = Vec::new();
        let mut warnings = Vec::new();
        // A first pass of every tree into pass1/ (the second one's base).
        let pass1 = dir.join("pass1");
        let mut firsts = Vec::new();
        if quiesce.as_ref().is_some_and(|q| q.first_pass()) {
            fs::create_dir(&pass1).map_err(|source| BackupError::Io {
                path: pass1.clone(),
                source,
            })?;
            for input in &inputs {
                if let Input::Tree(tree) = input {
                    let (entry, _) = archive_tree(store, &writer, opts, tree, &pass1, None, progress)?;
                    firsts.push(entry);
                }
            }
            // The second pass reads the first one's metadata streams back:
            // their chunks must be in the index, not only in the open pack.
            writer.finish()?;
        }
        let quiesced = match quiesce.as_mut() {
            Some(q) => q.quiesce(),
            None => Ok(()),
        };
        let mut firsts = firsts.iter();
        let passes = quiesced.and_then(|()| {
            for input in &inputs {
                archives.push(match input {
                    Input::Image(img) => {
                        let fidx_path = dir.join(format!("{}.fidx", img.name));
                        back_up_image(opts, chunk_size, img, &fidx_path, &writer, progress)?
                    }
                    Input::Tree(tree) => {
                        let base = firsts.next().map(|e| (pass1.as_path(), e));
                        let (entry, w) = archive_tree(store, &writer, opts, tree, &dir, base, progress)?;
                        warnings.extend(w);
                        entry
                    }
                });
            }
            Ok::<(), BackupError>(())
        });
        let resumed = match quiesce.as_mut() {
            Some(q) => q.resume(),
            None => Ok(()),
        };
        passes?;
        resumed?;
        if pass1.exists() {
            fs::remove_dir_all(&pass1).map_err(|source| BackupError::Io {
                path: pass1.clone(),
                source,
            })?;
        }
        crate::test_pause("backup-before-manifest");
        // Every referenced chunk is durable and indexed before the manifest exists.
        writer.finish()?;
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            kind: name.kind,
            id: name.id.clone(),
            time: name.time.clone(),
            mode: opts.mode.clone(),
            vm: opts.vm.clone(),
            ct: opts.ct.clone(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            duration_secs: started.elapsed().as_secs_f64(),
            archives,
        };
        if let Some(q) = quiesce.as_ref() {
            q.annotate(&mut manifest);
        }
        store.catalog().publish(&dir, &manifest)?;
        Ok((manifest, warnings))
    })();
    if result.is_err() {
        writer.abort();
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// What a worker decided about one chunk.
enum Outcome {
    Zero(Digest),
    Known(Digest),
    New(Digest, Vec<u8>),
}

/// One chunk handed to the writer: its number, length, whether it was read,
/// the decision, and the buffer to recycle (None when nothing was read).
struct Done {
    index: u64,
    len: u64,
    read: bool,
    outcome: Outcome,
    buf: Option<Vec<u8>>,
}

fn back_up_image(
    opts: &BackupOptions,
    chunk_size: ChunkSize,
    img: &ImageInput,
    fidx_path: &std::path::Path,
    writer: &ChunkWriter,
    progress: &dyn Progress,
) -> Result<ArchiveEntry, BackupError> {
    let src = img.source.as_ref();
    let source_name = src.describe();
    let size = src.size().map_err(|error| BackupError::SourceRead {
        source_name: source_name.clone(),
        offset: 0,
        error,
    })?;
    let count = chunk_size.count(size);
    let zeros = ZeroChunks::new(size, chunk_size.bytes());
    let fidx = FixedIndexWriter::create(fidx_path, size, chunk_size)?;
    // Workers hold a chunk each: extra ones for a latency-bound source are
    // capped at 64 MiB of chunk buffers.
    let threads = match opts.threads {
        0 => {
            let extra = src
                .reads_in_flight()
                .min((64 << 20) / chunk_size.bytes() as usize);
            crate::worker_threads(0).max(extra)
        }
        n => n,
    };
    let depth = (QUEUE_BYTES / chunk_size.bytes()) as usize;
    let (done_tx, done_rx) = bounded::<Done>(depth);
    let (free_tx, free_rx) = unbounded::<Vec<u8>>();
    let next = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    progress.begin(&img.name, size);

    let (worker_results, write_result) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let job = ChunkJob {
                    src,
                    source_name: &source_name,
                    size,
                    chunk_size,
                    zeros: &zeros,
                    plan: &img.plan,
                    writer,
                    next: &next,
                    abort: &abort,
                };
                let (tx, free) = (done_tx.clone(), free_rx.clone());
                s.spawn(move || {
                    let r = job.run(tx, free, opts.compression);
                    if r.is_err() {
                        job.abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        drop(done_tx);
        let mut stats = ArchiveStats::default();
        let mut received = 0u64;
        let write_result = (|| {
            for done in done_rx.iter() {
                let len = done.len;
                let digest = match done.outcome {
                    Outcome::Zero(d) => {
                        stats.zero_chunks += 1;
                        stats.zero_bytes += len;
                        d
                    }
                    Outcome::Known(d) => {
                        stats.reused_chunks += 1;
                        stats.reused_bytes += len;
                        d
                    }
                    Outcome::New(d, record) => {
                        if writer.store_chunk(d, &record, len as u32)? {
                            stats.new_chunks += 1;
                            stats.new_bytes += len;
                            stats.stored_bytes += record.len() as u64;
                        } else {
                            stats.reused_chunks += 1;
                            stats.reused_bytes += len;
                        }
                        d
                    }
                };
                fidx.set(done.index, &digest)?;
                if done.read {
                    stats.bytes_read += len;
                }
                received += 1;
                progress.advance(len);
                if let Some(buf) = done.buf {
                    let _ = free_tx.send(buf);
                }
            }
            Ok::<_, BackupError>(())
        })();
        if write_result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(done_rx);
        let works: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect();
        (works, write_result.map(|()| (stats, received)))
    });
    progress.end();
    for r in worker_results {
        r?;
    }
    let (stats, received) = write_result?;
    if received != count {
        return Err(BackupError::Interrupted);
    }
    let after = src.size().map_err(|error| BackupError::SourceRead {
        source_name: source_name.clone(),
        offset: size,
        error,
    })?;
    if after != size {
        return Err(BackupError::SourceResized {
            source_name,
            before: size,
            after,
        });
    }
    let ctime = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let header = fidx.finish(*uuid::Uuid::new_v4().as_bytes(), ctime)?;
    Ok(ArchiveEntry {
        name: img.name.clone(),
        index: format!("{}.fidx", img.name),
        archive_type: "fixed".into(),
        size,
        chunk_size: chunk_size.bytes(),
        chunk_count: count,
        index_checksum: header.checksum.to_hex(),
        bitmap: img.bitmap.clone(),
        payload: None,
        tree: None,
        stats,
    })
}

/// What each worker needs: it takes the next chunk number, reads the chunk,
/// recognises zeros, hashes, looks the digest up, and compresses new chunks.
struct ChunkJob<'a> {
    src: &'a dyn ImageSource,
    source_name: &'a str,
    size: u64,
    chunk_size: ChunkSize,
    zeros: &'a ZeroChunks,
    plan: &'a ReadPlan,
    writer: &'a ChunkWriter<'a>,
    next: &'a AtomicU64,
    abort: &'a AtomicBool,
}

impl ChunkJob<'_> {
    fn run(
        &self,
        done: Sender<Done>,
        free: Receiver<Vec<u8>>,
        compression: Compression,
    ) -> Result<(), BackupError> {
        let mut encoder = ChunkEncoder::new(compression).map_err(|source| BackupError::Io {
            path: "zstd".into(),
            source,
        })?;
        let count = self.chunk_size.count(self.size);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= count || self.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (_, len) = self.chunk_size.span(i, self.size);
            let skipped = self.unread_outcome(i, len)?;
            let message = match skipped {
                Some(outcome) => Done {
                    index: i,
                    len: len as u64,
                    read: false,
                    outcome,
                    buf: None,
                },
                None => {
                    let mut buf = free.try_recv().unwrap_or_default();
                    let digest = self.read_and_hash(i, &mut buf)?;
                    let outcome = match digest {
                        None => Outcome::Zero(self.zeros.digest(buf.len())),
                        Some(d) if self.writer.is_known(&d)? => Outcome::Known(d),
                        Some(d) => Outcome::New(d, encoder.encode(&buf, d)),
                    };
                    Done {
                        index: i,
                        len: len as u64,
                        read: true,
                        outcome,
                        buf: Some(buf),
                    }
                }
            };
            if done.send(message).is_err() {
                return Ok(()); // the writer stopped; its error is the one reported
            }
        }
    }

    /// The outcome of chunk `i` if the plan makes reading it unnecessary: a
    /// known zero chunk, or an unchanged chunk whose previous digest the
    /// store still holds (a chunk condemned by GC since is read again).
    fn unread_outcome(&self, i: u64, len: usize) -> Result<Option<Outcome>, BackupError> {
        if self.plan.zero.contains(i) {
            return Ok(Some(Outcome::Zero(self.zeros.digest(len))));
        }
        let Some((base, dirty)) = &self.plan.base else {
            return Ok(None);
        };
        if dirty.contains(i) {
            return Ok(None);
        }
        let d = base.digest(i);
        if self.zeros.is_zero_digest(&d) {
            return Ok(Some(Outcome::Zero(d)));
        }
        Ok(self.writer.is_known(&d)?.then_some(Outcome::Known(d)))
    }

    /// Fills `buf` with chunk `i`; returns its digest, or None if it is all zeros.
    fn read_and_hash(&self, i: u64, buf: &mut Vec<u8>) -> Result<Option<Digest>, BackupError> {
        let (offset, len) = self.chunk_size.span(i, self.size);
        buf.resize(len, 0);
        let mut hasher = blake3::Hasher::new();
        let mut zero_prefix = 0usize; // bytes so far that were all zero and not yet hashed
        let mut done = 0usize;
        while done < len {
            let end = done.saturating_add(self.src.preferred_read().max(1)).min(len);
            let piece = &mut buf[done..end];
            let got = read_full(self.src, piece, offset + done as u64).map_err(|error| {
                BackupError::SourceRead {
                    source_name: self.source_name.into(),
                    offset: offset + done as u64,
                    error,
                }
            })?;
            if got < piece.len() {
                return Err(BackupError::SourceShrank {
                    source_name: self.source_name.into(),
                    offset,
                    expected: len,
                    got: done + got,
                });
            }
            if zero_prefix == done && is_zero(piece) {
                zero_prefix = end;
            } else {
                if zero_prefix == done && done > 0 {
                    hasher.update(&buf[..done]); // the zero prefix, still in cache
                }
                hasher.update(&buf[done..end]);
            }
            done = end;
        }
        Ok((zero_prefix != len).then(|| Digest(*hasher.finalize().as_bytes())))
    }
}

/// The writing side of a backup session: one open pack, and the entries of
/// that pack that are not yet committed to the index. Workers ask it what is
/// known while the writer thread appends; the open pack is only touched by
/// the writer, so its lock is never contended.
pub struct ChunkWriter<'a> {
    store: &'a Store,
    open: Mutex<OpenPack>,
    /// Digests in the open pack, readable by the workers.
    in_open_pack: Mutex<HashSet<Digest>>,
}

#[derive(Default)]
struct OpenPack {
    pack: Option<PackWriter>,
    uncommitted: Vec<(Digest, ChunkLocation)>,
}

impl<'a> ChunkWriter<'a> {
    pub fn new(store: &'a Store) -> ChunkWriter<'a> {
        ChunkWriter {
            store,
            open: Mutex::default(),
            in_open_pack: Mutex::default(),
        }
    }

    /// True if the store (or this session's open pack) already has the chunk.
    pub fn is_known(&self, d: &Digest) -> Result<bool, IndexError> {
        if self.in_open_pack.lock().expect("lock poisoned").contains(d) {
            return Ok(true);
        }
        // A chunk condemned by garbage collection counts as absent: this
        // backup stores its own copy instead of claiming one that may go.
        Ok(self.store.index().entry(d)?.is_some_and(|e| e.condemned == 0))
    }

    /// Appends a record unless this session already wrote the chunk; returns
    /// whether it was written.
    pub fn store_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, BackupError> {
        if !self.in_open_pack.lock().expect("lock poisoned").insert(d) {
            return Ok(false);
        }
        let mut open = self.open.lock().expect("lock poisoned");
        if open.pack.is_none() {
            open.pack = Some(PackWriter::create(self.store.packs())?);
        }
        let pack = open.pack.as_mut().expect("pack just opened");
        let offset = pack.append(record)?;
        let loc = ChunkLocation {
            pack: pack.id(),
            offset,
            record_len: record.len() as u32,
            raw_len,
        };
        let full = pack.len() >= PACK_TARGET_SIZE;
        open.uncommitted.push((d, loc));
        if full {
            self.seal_and_commit(&mut open)?;
        }
        Ok(true)
    }

    fn seal_and_commit(&self, open: &mut OpenPack) -> Result<(), BackupError> {
        if let Some(pack) = open.pack.take() {
            pack.seal()?;
            self.store.index().commit(&open.uncommitted)?;
            open.uncommitted.clear();
            self.in_open_pack.lock().expect("lock poisoned").clear();
        }
        Ok(())
    }

    /// Seals and commits the open pack.
    pub fn finish(&self) -> Result<(), BackupError> {
        self.seal_and_commit(&mut self.open.lock().expect("lock poisoned"))
    }

    /// Drops the open pack. Packs already sealed stay: their chunks are
    /// indexed and may be shared by then; unreferenced ones are GC's to remove.
    pub fn abort(&self) {
        if let Some(p) = self.open.lock().expect("lock poisoned").pack.take() {
            p.abort();
        }
    }
}
