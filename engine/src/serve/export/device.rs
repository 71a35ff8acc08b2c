//! What serves an image talks to: a [`BlockDevice`] answering reads in
//! [`Piece`]s, and the one in memory that tests use.

use std::ops::Range;
use std::sync::Arc;

/// One piece of the answer to a read, in order.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Part of a decoded chunk (shared with the cache: no copy).
    Chunk(Arc<Vec<u8>>, Range<usize>),
    /// Bytes read for this request (from the overlay).
    Bytes(Vec<u8>),
    /// This many zero bytes, known without reading anything.
    Zero(usize),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Chunk(_, r) => r.len(),
            Piece::Bytes(b) => b.len(),
            Piece::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, or None for a run of zeros.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Piece::Chunk(c, r) => Some(&c[r.clone()]),
            Piece::Bytes(b) => Some(b),
            Piece::Zero(_) => None,
        }
    }
}

/// A request the device could not serve: the error number the client gets
/// and what the server log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// An NBD error number ([`crate::format::nbd_wire::EIO`], ...).
    pub errno: u32,
    pub message: String,
}

impl Fault {
    pub fn io(message: impl Into<String>) -> Fault {
        Fault {
            errno: crate::format::nbd_wire::EIO,
            message: message.into(),
        }
    }
}

/// An extent of the device: `len` bytes with `base:allocation` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub flags: u32,
}

/// What a server serves. Every method may be called from many threads at
/// once; offsets and lengths are already checked against [`size`](Self::size).
pub trait BlockDevice: Sync {
    fn size(&self) -> u64;
    fn writable(&self) -> bool;
    /// The bytes `offset..offset + len`, as pieces whose lengths add up to `len`.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<Piece>, Fault>;
    /// Extents from `offset` covering at most `len` bytes (at least one, none empty).
    fn extents(&self, offset: u64, len: u64) -> Vec<Extent>;
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Fault>;
    fn flush(&self) -> Result<(), Fault>;
    /// Warm the cache for `offset..offset + len` (NBD_CMD_CACHE); best effort.
    fn cache(&self, offset: u64, len: u64);
}

/// A device in memory, for tests and fuzzing: writable, and ranges of
/// zeros are reported as holes in 4 KiB blocks.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct MemoryDevice {
    data: std::sync::RwLock<Vec<u8>>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl MemoryDevice {
    pub(crate) fn new(data: Vec<u8>) -> MemoryDevice {
        MemoryDevice {
            data: std::sync::RwLock::new(data),
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl BlockDevice for MemoryDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn writable(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<Piece>, Fault> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let at = offset as usize;
        Ok(vec![Piece::Bytes(data[at..at + len].to_vec())])
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let end = (offset + len).min(data.len() as u64);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let next = end.min((pos / 4096 + 1) * 4096);
            let zero = crate::chunking::digest::is_zero(&data[pos as usize..next as usize]);
            let flags = if zero {
                crate::format::nbd_wire::STATE_HOLE | crate::format::nbd_wire::STATE_ZERO
            } else {
                0
            };
            match out.last_mut() {
                Some(e) if e.flags == flags => e.len += next - pos,
                _ => out.push(Extent {
                    len: next - pos,
                    flags,
                }),
            }
            pos = next;
        }
        out
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn flush(&self) -> Result<(), Fault> {
        Ok(())
    }

    fn cache(&self, _offset: u64, _len: u64) {}
}
