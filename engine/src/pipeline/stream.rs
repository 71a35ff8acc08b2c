//! A chunked output stream: bytes in, content-defined chunks out, each
//! hashed, looked up and (when new) compressed by the chunk pipeline's
//! workers, then stored and recorded in a dynamic index in stream order.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread::Scope;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::options::BackupError;
use super::{Chunk, Feed, Job, Pool, Work};
use crate::chunking::cdc::{CdcParams, StreamChunker};
use crate::chunking::digest::Digest;
use crate::format::chunk::Compression;
use crate::format::dynamic_index::DidxWriter;
use crate::format::snapshot::{ArchiveStats, StreamRecord};
use crate::store::ChunkSink;

/// The stream's feed: chunks the writer's thread cut, in stream order.
#[derive(Clone)]
struct StreamFeed(Receiver<(u64, Vec<u8>)>);

impl Feed for StreamFeed {
    type Error = BackupError;

    fn next(&mut self, _spare: &mut dyn FnMut() -> Vec<u8>) -> Result<Option<Job>, BackupError> {
        Ok(self.0.recv().ok().map(|(seq, data)| Job {
            seq,
            len: data.len() as u64,
            work: Work::Unhashed(data),
        }))
    }
}

pub(crate) struct StreamOut {
    chunker: StreamChunker,
    didx: DidxWriter,
    /// Bytes pushed or injected so far: the stream position.
    pos: u64,
    work: Sender<(u64, Vec<u8>)>,
    pool: Pool<BackupError>,
    next_seq: u64,
    next_out: u64,
    ready: BTreeMap<u64, Chunk>,
}

impl StreamOut {
    /// A stream into index `path`, with `threads` workers in `scope`.
    pub(crate) fn new<'s, 'e: 's>(
        scope: &'s Scope<'s, 'e>,
        path: &Path,
        cdc: CdcParams,
        writer: &'e dyn ChunkSink,
        compression: Compression,
        threads: usize,
    ) -> Result<StreamOut, BackupError> {
        let (work_tx, work_rx) = bounded::<(u64, Vec<u8>)>(2 * threads);
        let pool = Pool::start(
            scope,
            threads,
            2 * threads,
            StreamFeed(work_rx),
            writer,
            compression,
        )?;
        Ok(StreamOut {
            chunker: StreamChunker::new(cdc, writer.chunker()),
            didx: DidxWriter::create(path)?,
            pos: 0,
            work: work_tx,
            pool,
            next_seq: 0,
            next_out: 0,
            ready: BTreeMap::new(),
        })
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Appends bytes to the stream.
    pub(crate) fn push(
        &mut self,
        data: &[u8],
        writer: &dyn ChunkSink,
        stats: &mut ArchiveStats,
    ) -> Result<(), BackupError> {
        self.pos += data.len() as u64;
        let mut chunks = Vec::new();
        let pool = &self.pool;
        let _ = self.chunker.push(data, &mut |c: &[u8]| {
            chunks.push(filled(pool.spare(), c));
            Ok::<_, ()>(())
        });
        for c in chunks {
            self.submit(c, writer, stats)?;
        }
        Ok(())
    }

    /// Cuts what is buffered and waits until every chunk is in the index,
    /// so that chunks from elsewhere can follow.
    pub(crate) fn flush(
        &mut self,
        writer: &dyn ChunkSink,
        stats: &mut ArchiveStats,
    ) -> Result<(), BackupError> {
        let mut chunks = Vec::new();
        let pool = &self.pool;
        let _ = self.chunker.flush(&mut |c: &[u8]| {
            chunks.push(filled(pool.spare(), c));
            Ok::<_, ()>(())
        });
        for c in chunks {
            self.submit(c, writer, stats)?;
        }
        while self.next_out < self.next_seq {
            self.receive(true, writer, stats)?;
        }
        Ok(())
    }

    /// Appends a chunk the store already holds, unread. Call after
    /// [`flush`](Self::flush).
    pub(crate) fn inject(&mut self, len: u64, digest: &Digest) -> Result<(), BackupError> {
        debug_assert_eq!(self.next_out, self.next_seq);
        self.pos += len;
        self.didx.push(len, digest)?;
        Ok(())
    }

    fn submit(
        &mut self,
        chunk: Vec<u8>,
        writer: &dyn ChunkSink,
        stats: &mut ArchiveStats,
    ) -> Result<(), BackupError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        // Take finished chunks first, so a full work queue never waits on us.
        while self.work.is_full() {
            self.receive(true, writer, stats)?;
        }
        self.work
            .send((seq, chunk))
            .map_err(|_| BackupError::Interrupted)?;
        while self.receive(false, writer, stats)? {}
        Ok(())
    }

    /// Takes one result (waiting if `wait`) and writes every chunk that is
    /// next in order; false if nothing was there.
    fn receive(
        &mut self,
        wait: bool,
        writer: &dyn ChunkSink,
        stats: &mut ArchiveStats,
    ) -> Result<bool, BackupError> {
        let r = if wait {
            self.pool.recv().ok_or(BackupError::Interrupted)?
        } else {
            match self.pool.try_recv() {
                Some(r) => r,
                None => return Ok(false),
            }
        };
        let d = r?;
        self.ready.insert(d.seq, d);
        while let Some(d) = self.ready.remove(&self.next_out) {
            let digest = d.outcome.settle(writer, d.len, stats)?;
            self.didx.push(d.len, &digest)?;
            self.next_out += 1;
        }
        Ok(true)
    }

    /// Flushes, writes the index header and fsyncs.
    pub(crate) fn finish(
        mut self,
        writer: &dyn ChunkSink,
        stats: &mut ArchiveStats,
        uuid: [u8; 16],
        ctime: i64,
    ) -> Result<StreamRecord, BackupError> {
        self.flush(writer, stats)?;
        let h = self.didx.finish(uuid, ctime)?;
        Ok(StreamRecord {
            index: String::new(),
            size: h.size,
            chunk_count: h.chunk_count,
            index_checksum: h.checksum.to_hex(),
        })
    }
}

fn filled(mut buf: Vec<u8>, data: &[u8]) -> Vec<u8> {
    buf.extend_from_slice(data);
    buf
}
