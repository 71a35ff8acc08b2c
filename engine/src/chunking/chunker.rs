//! Fixed-size chunking of disk images: chunk `i` covers bytes
//! `[i * size, min((i + 1) * size, image_size))`.

use crate::error::{Classify, ErrorKind};
use std::fmt;

/// A validated fixed chunk size: a power of two from 64 KiB to 16 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSize(u64);

pub(crate) const MIN_CHUNK_SIZE: u64 = 64 * 1024;
pub(crate) const MAX_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("invalid chunk size {0}: must be a power of two from 64KiB to 16MiB")]
pub struct InvalidChunkSize(pub u64);

impl Classify for InvalidChunkSize {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl ChunkSize {
    pub fn new(bytes: u64) -> Result<ChunkSize, InvalidChunkSize> {
        if bytes.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&bytes) {
            Ok(ChunkSize(bytes))
        } else {
            Err(InvalidChunkSize(bytes))
        }
    }

    /// Parses `4M`, `64K`, `1048576`, `4MiB`.
    pub fn parse(text: &str) -> Result<ChunkSize, InvalidChunkSize> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        let stripped = lower.trim_end_matches("ib").trim_end_matches('b');
        let (digits, unit) = match stripped.char_indices().last() {
            Some((i, 'k')) => (&stripped[..i], 1024),
            Some((i, 'm')) => (&stripped[..i], 1024 * 1024),
            _ => (stripped, 1),
        };
        let n: u64 = digits.parse().map_err(|_| InvalidChunkSize(0))?;
        ChunkSize::new(n.checked_mul(unit).ok_or(InvalidChunkSize(u64::MAX))?)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Number of chunks covering `image_size` bytes.
    pub fn count(self, image_size: u64) -> u64 {
        image_size.div_ceil(self.0)
    }

    /// Offset and length of chunk `index` of an image of `image_size` bytes.
    pub fn span(self, index: u64, image_size: u64) -> (u64, usize) {
        let offset = index * self.0;
        (offset, (image_size - offset).min(self.0) as usize)
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 {
            write!(f, "{}MiB", self.0 / (1024 * 1024))
        } else {
            write!(f, "{}KiB", self.0 / 1024)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_range_and_power_of_two() {
        assert!(ChunkSize::new(64 * 1024).is_ok());
        assert!(ChunkSize::new(16 << 20).is_ok());
        assert!(ChunkSize::new(32 * 1024).is_err());
        assert!(ChunkSize::new(32 << 20).is_err());
        assert!(ChunkSize::new(3 << 20).is_err());
        assert_eq!(ChunkSize::parse("4M").unwrap().bytes(), 4 << 20);
        assert_eq!(ChunkSize::parse("64KiB").unwrap().bytes(), 64 << 10);
        assert_eq!(ChunkSize::parse("1048576").unwrap().bytes(), 1 << 20);
        assert!(ChunkSize::parse("abc").is_err());
        assert!(ChunkSize::parse("99999999999999999999M").is_err());
    }

    #[test]
    fn spans_cover_the_image_exactly() {
        let cs = ChunkSize::new(64 * 1024).unwrap();
        for size in [0u64, 1, 65535, 65536, 65537, 1_000_000] {
            let mut next = 0;
            for i in 0..cs.count(size) {
                let (off, len) = cs.span(i, size);
                assert_eq!(off, next);
                assert!(len > 0);
                next = off + len as u64;
            }
            assert_eq!(next, size);
        }
    }
}
