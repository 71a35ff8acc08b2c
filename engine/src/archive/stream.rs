//! Reading a chunked stream back through its dynamic index: sequentially
//! (`Read`) or at any offset, one verified chunk cached.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::thread::Scope;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::chunking::digest::Digest;
use crate::error::{Classify, Context, ErrorKind};
use crate::format::dynamic_index::{DidxError, DynamicIndex};
use crate::store::{ChunkSource, Repository, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Didx(#[from] DidxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for StreamError {
    fn kind(&self) -> ErrorKind {
        match self {
            StreamError::Didx(e) => e.kind(),
            StreamError::Store(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            StreamError::Didx(e) => e.context(),
            StreamError::Store(e) => e.context(),
        }
    }
}

pub struct StreamReader<'a> {
    index: DynamicIndex,
    reader: Box<dyn ChunkSource + 'a>,
    /// Recently decoded chunks by index, most recently used last: restore
    /// goes back a little whenever a reused file points into a chunk that
    /// came before a changed file's new ones.
    recent: VecDeque<(u64, Vec<u8>)>,
    /// Chunks decoded (or taken from the read-ahead) so far.
    decoded: u64,
    pos: u64,
    ahead: Option<ReadAhead>,
}

/// How many decoded chunks [`StreamReader`] keeps (at most 4 × the average
/// chunk size each).
const RECENT_CHUNKS: usize = 8;

/// Chunks decoded by worker threads ahead of a reader that goes forward.
struct ReadAhead {
    requests: Sender<(u64, Digest, usize)>,
    results: Receiver<(u64, Result<Vec<u8>, StoreError>)>,
    /// Buffers of evicted chunks, for the workers to decode into again.
    spare: Sender<Vec<u8>>,
    /// Chunks requested so far: `..requested`.
    requested: u64,
    /// The lowest chunk still obtainable: earlier ones were taken or dropped.
    low: u64,
    stash: HashMap<u64, Result<Vec<u8>, StoreError>>,
    window: u64,
}

impl<'a> StreamReader<'a> {
    pub fn open(store: &'a dyn Repository, path: &Path) -> Result<StreamReader<'a>, StreamError> {
        Ok(StreamReader {
            index: DynamicIndex::open(path)?,
            reader: store.reader()?,
            recent: VecDeque::with_capacity(RECENT_CHUNKS),
            decoded: 0,
            pos: 0,
            ahead: None,
        })
    }

    /// Decodes up to `window` chunks ahead on `threads` workers in `scope`,
    /// for readers that mostly go forward (restore). Going back still works.
    pub fn read_ahead<'s>(
        &mut self,
        scope: &'s Scope<'s, 'a>,
        store: &'a dyn Repository,
        threads: usize,
        window: u64,
    ) {
        let (req_tx, req_rx) = unbounded::<(u64, Digest, usize)>();
        let (res_tx, res_rx) = unbounded();
        let (spare_tx, spare_rx) = unbounded::<Vec<u8>>();
        for _ in 0..threads.min(crate::MAX_THREADS) {
            let (rx, tx, spare) = (req_rx.clone(), res_tx.clone(), spare_rx.clone());
            scope.spawn(move || {
                let mut reader = match store.reader() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send((u64::MAX, Err(e)));
                        return;
                    }
                };
                for (i, digest, len) in rx.iter() {
                    let mut buf = spare.try_recv().unwrap_or_default();
                    buf.resize(len, 0);
                    let r = reader.read_into(&digest, &mut buf).map(|n| {
                        buf.truncate(n);
                        buf
                    });
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        self.ahead = Some(ReadAhead {
            requests: req_tx,
            results: res_rx,
            spare: spare_tx,
            requested: 0,
            low: 0,
            stash: HashMap::new(),
            window,
        });
    }

    /// Chunk `i` from the read-ahead workers; None without read-ahead or
    /// for a chunk before one already taken, which the caller then reads
    /// itself.
    fn take_ahead(&mut self, i: u64) -> Option<Result<Vec<u8>, StoreError>> {
        let count = self.index.chunk_count();
        let ahead = self.ahead.as_mut()?;
        if i < ahead.low {
            return None;
        }
        if i >= ahead.requested {
            // A jump past what was asked for: start again at i.
            ahead.stash.clear();
            ahead.requested = i;
        }
        while ahead.requested < (i + ahead.window).min(count) {
            let j = ahead.requested;
            let len = (self.index.end(j) - self.index.start(j)) as usize;
            let _ = ahead.requests.send((j, self.index.digest(j), len));
            ahead.requested += 1;
        }
        ahead.stash.retain(|k, _| *k >= i);
        loop {
            if let Some(r) = ahead.stash.remove(&i) {
                ahead.low = i + 1;
                return Some(r);
            }
            let (j, r) = ahead.results.recv().ok()?;
            if j == u64::MAX {
                return Some(r); // a worker could not start
            }
            if j >= i {
                ahead.stash.insert(j, r);
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.index.header().size
    }

    pub fn index(&self) -> &DynamicIndex {
        &self.index
    }

    /// How many chunks were decoded so far (each at most once while it is
    /// among the recent ones).
    pub fn chunks_decoded(&self) -> u64 {
        self.decoded
    }

    /// Decoded chunk `i`, from the recent chunks, the read-ahead or the store.
    fn chunk(&mut self, i: u64) -> Result<&[u8], StreamError> {
        if let Some(at) = self.recent.iter().position(|(j, _)| *j == i) {
            let hit = self.recent.remove(at).expect("position is in range");
            self.recent.push_back(hit);
        } else {
            self.decoded += 1;
            let len = (self.index.end(i) - self.index.start(i)) as usize;
            let mut buf = if self.recent.len() == RECENT_CHUNKS {
                self.recent.pop_front().map(|(_, b)| b).unwrap_or_default()
            } else {
                Vec::new()
            };
            match self.take_ahead(i) {
                Some(r) => {
                    if let Some(a) = &self.ahead {
                        let _ = a.spare.send(std::mem::replace(&mut buf, r?));
                    }
                }
                None => {
                    buf.resize(len, 0);
                    let n = self.reader.read_into(&self.index.digest(i), &mut buf)?;
                    buf.truncate(n);
                }
            }
            if buf.len() != len {
                return Err(StoreError::ChunkDamaged {
                    digest: self.index.digest(i),
                    pack: self.index.path().to_path_buf(),
                    source: crate::format::chunk::RecordError::LengthMismatch {
                        expected: len as u32,
                        actual: buf.len(),
                    },
                }
                .into());
            }
            self.recent.push_back((i, buf));
        }
        Ok(&self.recent.back().expect("pushed above").1)
    }

    /// The bytes from `offset` to the end of the chunk that holds it, without
    /// copying them; empty at or past the end of the stream.
    pub fn slice_at(&mut self, offset: u64) -> Result<&[u8], StreamError> {
        let Some(i) = self.index.chunk_at(offset) else {
            return Ok(&[]);
        };
        let from = (offset - self.index.start(i)) as usize;
        Ok(&self.chunk(i)?[from..])
    }

    /// Reads up to `out.len()` bytes at `offset` (fewer only at the end).
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, StreamError> {
        let mut done = 0;
        while done < out.len() {
            let data = self.slice_at(offset + done as u64)?;
            if data.is_empty() {
                break;
            }
            let n = data.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&data[..n]);
            done += n;
        }
        Ok(done)
    }
}

impl io::Read for StreamReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, out).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::chunk::{ChunkEncoder, Compression};
    use crate::format::dynamic_index::DidxWriter;
    use crate::store::backup_session::BackupSession;
    use crate::store::{ChunkSink, Store};
    use std::io::Read;

    /// A stream of 20 chunks of 1000 bytes each, byte k of the stream = k % 251.
    fn twenty_chunks(store: &Store, path: &Path) -> Vec<u8> {
        let data: Vec<u8> = (0..20_000u32).map(|k| (k % 251) as u8).collect();
        let writer = BackupSession::begin(store, "test").unwrap();
        let mut enc = ChunkEncoder::new(Compression::Zstd(1)).unwrap();
        let mut w = DidxWriter::create(path).unwrap();
        for c in data.chunks(1000) {
            let d = Digest::of(c);
            writer.add_chunk(d, &enc.encode(c, d), c.len() as u32).unwrap();
            w.push(c.len() as u64, &d).unwrap();
        }
        writer.flush().unwrap();
        w.finish([0; 16], 0).unwrap();
        data
    }

    #[test]
    fn going_back_a_few_chunks_decodes_nothing_again() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::init(&tmp.path().join("s"), ChunkSize::new(65536).unwrap()).unwrap();
        let path = tmp.path().join("x.didx");
        let data = twenty_chunks(&store, &path);
        std::thread::scope(|scope| {
            let mut r = StreamReader::open(&store, &path).unwrap();
            r.read_ahead(scope, &store, 2, 4);
            // Forward, back into a recent chunk, forward again, far back.
            for (at, len) in [(0, 4500), (2500, 100), (4400, 3000), (1000, 50), (500, 19_500)] {
                let mut out = vec![0u8; len];
                assert_eq!(r.read_at(at as u64, &mut out).unwrap(), len);
                assert_eq!(out, data[at..at + len]);
            }
            // Every chunk once: the reads back hit the recent chunks.
            assert_eq!(r.chunks_decoded(), 20);
            let mut all = Vec::new();
            let mut fresh = StreamReader::open(&store, &path).unwrap();
            fresh.read_to_end(&mut all).unwrap();
            assert_eq!(all, data);
            assert_eq!(fresh.chunks_decoded(), 20);
            // A slice never crosses a chunk end; past the end it is empty.
            assert_eq!(fresh.slice_at(1500).unwrap(), &data[1500..2000]);
            assert!(fresh.slice_at(20_000).unwrap().is_empty());
        });
    }
}
