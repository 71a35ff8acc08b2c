//! The chunk pipeline, shared by every producer of chunks (the image
//! reader and the tree archiver's streams): one worker pool, one
//! hash → lookup → compress step, one result type, applied to the backup
//! session by one writer.
//!
//! ```text
//!  Feed::next ──▶ workers: hash (unless the feed did), ask the session,
//!                 zstd for new chunks only ──▶ Chunk{seq, outcome} ──▶ writer:
//!                                                  Outcome::settle, index
//! ```
//!
//! Producers differ only in their `Feed`: the image feed is called by the
//! workers themselves, which take chunk numbers and read the source in
//! place (so a slow NBD source gets many reads in flight, and each piece is
//! hashed while it is in cache); a stream feed hands out the chunks a
//! content-defined chunker cut on the writer's thread. Results arrive in
//! any order, tagged with the feed's sequence number.
//!
//! [`options`] holds what a backup is asked to do and how it fails (shared
//! by every layer above); [`stream`] is the stream feed the tree archiver
//! writes into.

pub(crate) mod options;
pub(crate) mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Scope;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::chunking::digest::Digest;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::snapshot::ArchiveStats;
use crate::store::ChunkSink;
use crate::store::StoreError;

/// What a worker decided about one chunk.
pub(crate) enum Outcome {
    /// All zeros: nothing is stored.
    Zero(Digest),
    /// The store (or the session's open pack) holds it.
    Known(Digest),
    /// New: the encoded record to add.
    New(Digest, Vec<u8>),
}

impl Outcome {
    /// Decides about a non-zero chunk `data` with digest `digest`: one
    /// lookup, and compression only when the session does not have it.
    pub(crate) fn decide(
        session: &dyn ChunkSink,
        encoder: &mut ChunkEncoder,
        data: &[u8],
        digest: Digest,
    ) -> Result<Outcome, StoreError> {
        Ok(if session.is_known(&digest)? {
            Outcome::Known(digest)
        } else {
            Outcome::New(digest, encoder.encode(data, digest))
        })
    }

    /// Applies the decision about a chunk of `len` bytes: adds a new
    /// record to the session (which may find another worker added the
    /// same chunk first) and counts it; returns the digest to index.
    pub(crate) fn settle(
        self,
        session: &dyn ChunkSink,
        len: u64,
        stats: &mut ArchiveStats,
    ) -> Result<Digest, StoreError> {
        Ok(match self {
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
                if session.add_chunk(d, &record, len as u32)? {
                    stats.new_chunks += 1;
                    stats.new_bytes += len;
                    stats.stored_bytes += record.len() as u64;
                } else {
                    stats.reused_chunks += 1;
                    stats.reused_bytes += len;
                }
                d
            }
        })
    }
}

/// One chunk as a feed hands it to a worker.
pub(crate) struct Job {
    /// The chunk's place: the image's chunk number, or the stream's order.
    pub seq: u64,
    pub len: u64,
    pub work: Work,
}

pub(crate) enum Work {
    /// Decided by the feed, with the bytes it read to decide (a zero
    /// chunk), if any, for reuse.
    Decided(Outcome, Option<Vec<u8>>),
    /// Read and hashed by the feed.
    Hashed(Vec<u8>, Digest),
    /// Bytes for the worker to hash.
    Unhashed(Vec<u8>),
}

/// Where workers get chunks. Each worker owns a clone.
pub(crate) trait Feed: Clone + Send {
    type Error: From<StoreError> + Send;

    /// The next job, or None when the feed is done. `spare` gives a buffer
    /// recycled from an earlier chunk (or a new, empty one) to read into.
    fn next(&mut self, spare: &mut dyn FnMut() -> Vec<u8>) -> Result<Option<Job>, Self::Error>;
}

/// A chunk after a worker, for the writer.
pub(crate) struct Chunk {
    pub seq: u64,
    pub len: u64,
    /// Whether its bytes were read (not decided from a plan).
    pub read: bool,
    pub outcome: Outcome,
}

/// A chunk and its buffer, on the way back to the writer.
type Done = (Chunk, Option<Vec<u8>>);
type Finished<E> = Result<Done, E>;

/// A running pool of workers: results come out of [`recv`](Pool::recv) in
/// the order they finish. Dropping the pool stops the workers after the
/// chunk each one holds.
pub(crate) struct Pool<E> {
    done: Receiver<Finished<E>>,
    free: Sender<Vec<u8>>,
    spares: Receiver<Vec<u8>>,
    abort: Arc<AtomicBool>,
}

impl<E: Send> Pool<E> {
    /// Starts `threads` workers in `scope`, each with its own clone of
    /// `feed`, with at most `queue` finished chunks waiting for the writer.
    /// Fails only if an encoder cannot be made.
    pub(crate) fn start<'s, 'e: 's, F: Feed<Error = E> + 'e>(
        scope: &'s Scope<'s, 'e>,
        threads: usize,
        queue: usize,
        feed: F,
        session: &'e dyn ChunkSink,
        compression: Compression,
    ) -> Result<Pool<E>, crate::store::StoreError>
    where
        E: 'e,
    {
        let (done_tx, done_rx) = bounded(queue);
        let (free_tx, free_rx) = unbounded::<Vec<u8>>();
        let abort = Arc::new(AtomicBool::new(false));
        for _ in 0..crate::worker_threads(threads.max(1)) {
            let mut worker = Worker {
                feed: feed.clone(),
                session,
                encoder: session.encoder(compression)?,
                done: done_tx.clone(),
                free: free_rx.clone(),
                abort: abort.clone(),
            };
            scope.spawn(move || worker.run());
        }
        Ok(Pool {
            done: done_rx,
            free: free_tx,
            spares: free_rx,
            abort,
        })
    }

    /// The next finished chunk (waiting for one), or None when every
    /// worker has stopped.
    pub(crate) fn recv(&self) -> Option<Result<Chunk, E>> {
        Some(self.done.recv().ok()?.map(|c| self.recycle(c)))
    }

    /// A finished chunk if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<Result<Chunk, E>> {
        Some(self.done.try_recv().ok()?.map(|c| self.recycle(c)))
    }

    /// An empty buffer, recycled from a finished chunk if one is free (for
    /// a feed that fills buffers on the writer's side).
    pub(crate) fn spare(&self) -> Vec<u8> {
        let mut buf = self.spares.try_recv().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Buffers go back as they are: a feed that reads chunks of one size
    /// into them resizes without filling them again.
    fn recycle(&self, (chunk, buf): Done) -> Chunk {
        if let Some(buf) = buf {
            let _ = self.free.send(buf);
        }
        chunk
    }
}

impl<E> Drop for Pool<E> {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
    }
}

struct Worker<'e, F: Feed> {
    feed: F,
    session: &'e dyn ChunkSink,
    encoder: ChunkEncoder,
    done: Sender<Finished<F::Error>>,
    free: Receiver<Vec<u8>>,
    abort: Arc<AtomicBool>,
}

impl<F: Feed> Worker<'_, F> {
    /// Runs jobs until the feed is done, the pool is dropped or a step
    /// fails; a failure stops the other workers too.
    fn run(&mut self) {
        while !self.abort.load(Ordering::Relaxed) {
            let sent = match self.step() {
                Ok(None) => return,
                Ok(Some(c)) => self.done.send(Ok(c)),
                Err(e) => {
                    self.abort.store(true, Ordering::Relaxed);
                    let _ = self.done.send(Err(e));
                    return;
                }
            };
            if sent.is_err() {
                return; // the writer stopped: its error is the one reported
            }
        }
    }

    /// One chunk through the pipeline, or None when the feed is done.
    fn step(&mut self) -> Result<Option<Done>, F::Error> {
        let free = &self.free;
        let Some(job) = self.feed.next(&mut || free.try_recv().unwrap_or_default())? else {
            return Ok(None);
        };
        let (outcome, data) = match job.work {
            Work::Decided(o, data) => (o, data),
            Work::Hashed(data, d) => (
                Outcome::decide(self.session, &mut self.encoder, &data, d)?,
                Some(data),
            ),
            Work::Unhashed(data) => {
                let d = self.session.hasher().digest(&data);
                (
                    Outcome::decide(self.session, &mut self.encoder, &data, d)?,
                    Some(data),
                )
            }
        };
        let chunk = Chunk {
            seq: job.seq,
            len: job.len,
            read: data.is_some(),
            outcome,
        };
        Ok(Some((chunk, data)))
    }
}
