//! Reading a chunked stream back through its dynamic index: sequentially
//! (`Read`) or at any offset, one verified chunk cached.

use std::io;
use std::path::Path;

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
}

impl<'a> StreamReader<'a> {
    pub fn open(store: &'a Store, path: &Path) -> Result<StreamReader<'a>, StreamError> {
        Ok(StreamReader {
            index: DynamicIndex::open(path)?,
            reader: ChunkReader::new(store)?,
            cached: None,
            buf: Vec::new(),
            pos: 0,
        })
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
