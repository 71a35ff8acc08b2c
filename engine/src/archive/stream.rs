//! Reading a chunked stream back through its dynamic index: sequentially
//! (`Read`) or at any offset, one verified chunk cached.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::thread::Scope;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::digest::Digest;
use crate::dynamic_index::{DidxError, DynamicIndex};
use crate::store::{ChunkReader, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Didx(#[from] DidxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct StreamReader<'a> {
    index: DynamicIndex,
    reader: ChunkReader<'a>,
    /// The chunk in `buf`, and its start offset.
    cached: Option<(u64, u64)>,
    buf: Vec<u8>,
    pos: u64,
    ahead: Option<ReadAhead>,
}

/// Chunks decoded by worker threads ahead of a reader that goes forward.
struct ReadAhead {
    requests: Sender<(u64, Digest, usize)>,
    results: Receiver<(u64, Result<Vec<u8>, StoreError>)>,
    /// Chunks requested so far: `..requested`.
    requested: u64,
    /// The lowest chunk still obtainable: earlier ones were taken or dropped.
    low: u64,
    stash: HashMap<u64, Result<Vec<u8>, StoreError>>,
    window: u64,
}

impl<'a> StreamReader<'a> {
    pub fn open(store: &'a Store, path: &Path) -> Result<StreamReader<'a>, StreamError> {
        Ok(StreamReader {
            index: DynamicIndex::open(path)?,
            reader: ChunkReader::new(store)?,
            cached: None,
            buf: Vec::new(),
            pos: 0,
            ahead: None,
        })
    }

    /// Decodes up to `window` chunks ahead on `threads` workers in `scope`,
    /// for readers that mostly go forward (restore). Going back still works.
    pub fn read_ahead<'s>(
        &mut self,
        scope: &'s Scope<'s, 'a>,
        store: &'a Store,
        threads: usize,
        window: u64,
    ) {
        let (req_tx, req_rx) = unbounded::<(u64, Digest, usize)>();
        let (res_tx, res_rx) = unbounded();
        for _ in 0..threads {
            let (rx, tx) = (req_rx.clone(), res_tx.clone());
            scope.spawn(move || {
                let mut reader = match ChunkReader::new(store) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send((u64::MAX, Err(e)));
                        return;
                    }
                };
                for (i, digest, len) in rx.iter() {
                    let mut buf = vec![0u8; len];
                    let r = reader.read_into(&digest, &mut buf).map(|_| buf);
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        self.ahead = Some(ReadAhead {
            requests: req_tx,
            results: res_rx,
            requested: 0,
            low: 0,
            stash: HashMap::new(),
            window,
        });
    }

    /// Chunk `i` from the read-ahead workers; None without read-ahead or
    /// for a chunk before one already taken (offsets of reused files can go
    /// back), which the caller then reads itself.
    fn take_ahead(&mut self, i: u64) -> Option<Result<Vec<u8>, StoreError>> {
        let count = self.index.chunk_count();
        let ahead = self.ahead.as_mut()?;
        if i < ahead.low {
            return None; // taken or passed already: the caller reads it directly
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

    /// Reads up to `out.len()` bytes at `offset` (fewer only at the end).
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, StreamError> {
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let Some(i) = self.index.chunk_at(at) else {
                break;
            };
            let start = self.index.start(i);
            if self.cached.map(|c| c.0) != Some(i) {
                let len = (self.index.end(i) - start) as usize;
                if let Some(r) = self.take_ahead(i) {
                    self.buf = r?;
                    self.cached = Some((i, start));
                    let from = (at - start) as usize;
                    let n = (self.buf.len() - from).min(out.len() - done);
                    out[done..done + n].copy_from_slice(&self.buf[from..from + n]);
                    done += n;
                    continue;
                }
                self.buf.resize(len, 0);
                let n = self.reader.read_into(&self.index.digest(i), &mut self.buf)?;
                if n != len {
                    return Err(StoreError::ChunkDamaged {
                        digest: self.index.digest(i),
                        pack: self.index.path().to_path_buf(),
                        source: crate::chunk::RecordError::LengthMismatch {
                            expected: len as u32,
                            actual: n,
                        },
                    }
                    .into());
                }
                self.cached = Some((i, start));
            }
            let from = (at - start) as usize;
            let n = (self.buf.len() - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[from..from + n]);
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
