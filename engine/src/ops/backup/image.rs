//! Image backup: hashing workers read the source, one writer adds the new
//! chunks to the session.
//!
//! ```text
//!  workers: take chunk i, pread it in pieces, zero check and BLAKE3 each
//!           piece while cached, ask the session, zstd for new chunks only
//!                                   │
//!              fidx[i] = digest ◀── writer: add new records to the session
//!                                   (which seals and commits full packs)
//! ```
//! Queues are bounded by bytes in flight, so memory does not grow with the
//! image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::chunk_ranges::ChunkRanges;
use super::read_ahead::{ReadAhead, READERS};
use super::seed_ahead::SeedAhead;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{is_zero, Digest, ZeroChunks};
use crate::format::fixed_index::{FixedIndex, FixedIndexWriter};
use crate::format::snapshot::{ArchiveEntry, ArchiveKind, ArchiveStats, BitmapRecord};
use crate::pipeline::options::{BackupError, BackupOptions};
use crate::pipeline::{Feed, Job, Outcome, Pool, Work};
use crate::progress::Progress;
use crate::source::{read_full, ImageSource};
use crate::store::ChunkSink;
use crate::store::Repository;

/// One image to back up under archive name `name` (`NAME.img`).
pub struct ImageInput {
    pub name: String,
    pub source: Box<dyn ImageSource>,
    /// What is known about the image before reading it.
    pub plan: ReadPlan,
    /// Recorded in the manifest: the dirty bitmap that tracks changes since
    /// this backup's point in time.
    pub bitmap: Option<BitmapRecord>,
    /// Recorded in the manifest as the archive's `source`.
    pub origin: String,
}

impl ImageInput {
    /// An image read whole.
    pub fn full(name: String, source: Box<dyn ImageSource>) -> ImageInput {
        ImageInput {
            name,
            origin: source.describe(),
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

/// Bytes of chunk data allowed to wait in the queue to the writer. With the
/// workers and the writer each holding one chunk (plus its record), this
/// keeps peak RSS near 160 MiB even with 16 MiB chunks; 16 MiB chunks get
/// rendezvous queues.
const QUEUE_BYTES: u64 = 8 * 1024 * 1024;

pub(super) fn back_up_image(
    store: &dyn Repository,
    opts: &BackupOptions,
    chunk_size: ChunkSize,
    img: &ImageInput,
    fidx_path: &std::path::Path,
    writer: &dyn ChunkSink,
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
    // Chunks inside the source's holes are zeros too, known without a read.
    let holes = src.holes(size).map_err(|error| BackupError::SourceRead {
        source_name: source_name.clone(),
        offset: 0,
        error,
    })?;
    let zero = img.plan.zero.union(&ChunkRanges::inside(holes, chunk_size, size));
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
        n => crate::worker_threads(n),
    };
    // Asked about in batches while the workers run: the base's unchanged
    // chunks, whose digests the plan takes unread, or without a base the
    // previous backup's, which most chunks read will hash to again.
    let previous = match img.plan.base {
        Some(_) => None,
        None => previous_index(store, opts, &img.name, chunk_size),
    };
    let seed = match &img.plan.base {
        Some((base, dirty)) => Some(SeedAhead::new(base, Some(dirty))),
        None => previous.as_ref().map(|prev| SeedAhead::new(prev, None)),
    };
    // Without a base every chunk but the zeros is read, in order: reader
    // threads read them ahead in large blocks.
    let read_ahead =
        (img.plan.base.is_none() && src.reads_ahead()).then(|| ReadAhead::new(src, size, chunk_size, &zero));
    let depth = (QUEUE_BYTES / chunk_size.bytes()) as usize;
    let next = AtomicU64::new(0);
    let feed = ImageFeed {
        src,
        source_name: &source_name,
        size,
        chunk_size,
        zeros: &zeros,
        zero: &zero,
        base: img.plan.base.as_ref(),
        seed: seed.as_ref(),
        read_ahead: read_ahead.as_ref(),
        writer,
        next: &next,
    };
    progress.begin(&img.name, size);
    let result = std::thread::scope(|s| {
        let seeding = seed.as_ref().map(|a| s.spawn(|| a.run(writer)));
        if let Some(ra) = &read_ahead {
            for _ in 0..READERS {
                s.spawn(|| ra.run());
            }
        }
        // However the workers end, the readers do too.
        let _stop_reading = read_ahead.as_ref().map(ReadAhead::stopper);
        let pool = Pool::start(s, threads, depth, feed, writer, opts.compression)?;
        let mut stats = ArchiveStats::default();
        let mut received = 0u64;
        while let Some(chunk) = pool.recv() {
            let chunk = chunk?;
            let digest = chunk.outcome.settle(writer, chunk.len, &mut stats)?;
            fidx.set(chunk.seq, &digest)?;
            if chunk.read {
                stats.bytes_read += chunk.len;
            }
            received += 1;
            progress.advance(chunk.len);
        }
        if let Some(h) = seeding {
            h.join().expect("seeding thread panicked")?;
        }
        Ok::<_, BackupError>((stats, received))
    });
    progress.end();
    let (stats, received) = result?;
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
        archive_type: ArchiveKind::Fixed,
        size,
        chunk_size: chunk_size.bytes(),
        chunk_count: count,
        index_checksum: header.checksum.to_hex(),
        bitmap: img.bitmap.clone(),
        payload: None,
        tree: None,
        source: Some(img.origin.clone()),
        stats,
    })
}

/// The image feed, called by each worker: it takes the next chunk number,
/// and reads and hashes the chunk unless the plan decides it unread.
#[derive(Clone, Copy)]
struct ImageFeed<'a> {
    src: &'a dyn ImageSource,
    source_name: &'a str,
    size: u64,
    chunk_size: ChunkSize,
    zeros: &'a ZeroChunks,
    /// Chunks known to be zeros: the plan's and the source's holes.
    zero: &'a ChunkRanges,
    base: Option<&'a (FixedIndex, ChunkRanges)>,
    seed: Option<&'a SeedAhead<'a>>,
    read_ahead: Option<&'a ReadAhead<'a>>,
    writer: &'a dyn ChunkSink,
    next: &'a AtomicU64,
}

impl Feed for ImageFeed<'_> {
    type Error = BackupError;

    fn next(&mut self, spare: &mut dyn FnMut() -> Vec<u8>) -> Result<Option<Job>, BackupError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.chunk_size.count(self.size);
        if i >= count {
            return Ok(None);
        }
        if i == count / 2 {
            crate::failpoint::pause("backup-image-half-read");
        }
        if crate::signals::pending() {
            return Err(BackupError::Interrupted);
        }
        let len = self.chunk_size.span(i, self.size).1;
        let work = match self.unread_outcome(i, len)? {
            Some(outcome) => Work::Decided(outcome, None),
            None => {
                let mut buf = spare();
                match self.read_and_hash(i, &mut buf)? {
                    None => Work::Decided(Outcome::Zero(self.zeros.digest(buf.len())), Some(buf)),
                    Some(d) => Work::Hashed(buf, d),
                }
            }
        };
        Ok(Some(Job {
            seq: i,
            len: len as u64,
            work,
        }))
    }
}

/// The index of the newest earlier backup of image `name` in this group
/// with the same chunk size, unless its verification failed.
fn previous_index(
    store: &dyn Repository,
    opts: &BackupOptions,
    name: &str,
    chunk_size: ChunkSize,
) -> Option<FixedIndex> {
    let catalog = store.catalogue();
    catalog.newest_base((opts.kind, &opts.id), name, |n, a| {
        let fits = a.archive_type == ArchiveKind::Fixed && a.chunk_size == chunk_size.bytes();
        fits.then(|| catalog.open_fixed(n, a).ok()).flatten()
    })
}

impl ImageFeed<'_> {
    /// The outcome of chunk `i` if the plan makes reading it unnecessary: a
    /// known zero chunk, or an unchanged chunk whose previous digest the
    /// store still holds (a chunk condemned by GC since is read again).
    fn unread_outcome(&self, i: u64, len: usize) -> Result<Option<Outcome>, BackupError> {
        if self.zero.contains(i) {
            return Ok(Some(Outcome::Zero(self.zeros.digest(len))));
        }
        let Some((base, dirty)) = self.base else {
            return Ok(None);
        };
        if dirty.contains(i) {
            return Ok(None);
        }
        let d = base.digest(i);
        if self.zeros.is_zero_digest(&d) {
            return Ok(Some(Outcome::Zero(d)));
        }
        if let Some(a) = self.seed {
            a.wait_for(i);
        }
        Ok(self.writer.is_known(&d)?.then_some(Outcome::Known(d)))
    }

    /// Fills `buf` with chunk `i`; returns its digest, or None if it is all zeros.
    fn read_and_hash(&self, i: u64, buf: &mut Vec<u8>) -> Result<Option<Digest>, BackupError> {
        if self.read_ahead.is_some_and(|ra| ra.take(i, buf)) {
            return Ok((!is_zero(buf)).then(|| self.writer.hasher().digest(buf)));
        }
        let (offset, len) = self.chunk_size.span(i, self.size);
        buf.resize(len, 0);
        let mut hasher = self.writer.hasher().hasher();
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
            crate::throttle::charge(got);
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
