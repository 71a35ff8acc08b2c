//! Dynamic index files (`.didx`): the chunks of a byte stream cut at
//! content-defined points, as (end offset, digest) entries in stream order.
//! Binary search by offset gives random access; mmap-able. Layout:
//! format-spec/dynamic-index.md.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::chunking::digest::Digest;
use crate::error::{io_kind, Classify, Context, ErrorKind};

pub(crate) const DIDX_MAGIC: [u8; 8] = *b"HRDDIDX\0";
pub(crate) const DIDX_VERSION: u32 = 1;
pub(crate) const DIDX_HEADER_LEN: usize = 128;
pub(crate) const DIDX_ENTRY_LEN: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum DidxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a hoard dynamic index (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: unsupported dynamic index version {version}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: dynamic index header checksum mismatch")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: dynamic index is invalid: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("{path}: dynamic index entry checksum mismatch (index damaged)")]
    EntryChecksum { path: PathBuf },
}

impl Classify for DidxError {
    fn kind(&self) -> ErrorKind {
        match self {
            DidxError::Io { source, .. } => io_kind(source),
            _ => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            DidxError::Io { path, .. }
            | DidxError::BadMagic { path }
            | DidxError::UnsupportedVersion { path, .. }
            | DidxError::HeaderChecksum { path }
            | DidxError::Bad { path, .. }
            | DidxError::EntryChecksum { path } => Context::path(path),
        }
    }
}

/// The header fields of a dynamic index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DidxHeader {
    pub uuid: [u8; 16],
    pub ctime: i64,
    /// Stream length: the last entry's end offset (0 for an empty stream).
    pub size: u64,
    pub chunk_count: u64,
    /// BLAKE3 of the entry array.
    pub checksum: Digest,
}

impl DidxHeader {
    pub fn encode(&self) -> [u8; DIDX_HEADER_LEN] {
        let mut h = [0u8; DIDX_HEADER_LEN];
        h[0..8].copy_from_slice(&DIDX_MAGIC);
        h[8..12].copy_from_slice(&DIDX_VERSION.to_le_bytes());
        h[16..32].copy_from_slice(&self.uuid);
        h[32..40].copy_from_slice(&self.ctime.to_le_bytes());
        h[40..48].copy_from_slice(&self.size.to_le_bytes());
        h[48..56].copy_from_slice(&self.chunk_count.to_le_bytes());
        h[56..88].copy_from_slice(&self.checksum.0);
        let crc = crc32c::crc32c(&h[..124]);
        h[124..128].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Parses and fully verifies index bytes: header, length, entry checksum and
/// strictly increasing end offsets. Also the fuzz target.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<DidxHeader, DidxError> {
    let p = || path.to_path_buf();
    let bad = |reason: String| DidxError::Bad { path: p(), reason };
    if bytes.len() >= 8 && bytes[..8] != DIDX_MAGIC {
        return Err(DidxError::BadMagic { path: p() });
    }
    let h: &[u8; DIDX_HEADER_LEN] = bytes
        .get(..DIDX_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad(format!("{} bytes, shorter than the header", bytes.len())))?;
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != DIDX_VERSION {
        return Err(DidxError::UnsupportedVersion { path: p(), version });
    }
    if crc32c::crc32c(&h[..124]) != u32::from_le_bytes(h[124..128].try_into().expect("4 bytes")) {
        return Err(DidxError::HeaderChecksum { path: p() });
    }
    let header = DidxHeader {
        uuid: h[16..32].try_into().expect("16 bytes"),
        ctime: u64_at(32) as i64,
        size: u64_at(40),
        chunk_count: u64_at(48),
        checksum: Digest(h[56..88].try_into().expect("32 bytes")),
    };
    let expected = header
        .chunk_count
        .checked_mul(DIDX_ENTRY_LEN as u64)
        .and_then(|n| n.checked_add(DIDX_HEADER_LEN as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "{} bytes for {} entries",
            bytes.len(),
            header.chunk_count
        )));
    }
    let entries = &bytes[DIDX_HEADER_LEN..];
    if Digest::of(entries) != header.checksum {
        return Err(DidxError::EntryChecksum { path: p() });
    }
    let mut last = 0u64;
    for e in entries.chunks_exact(DIDX_ENTRY_LEN) {
        let end = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
        if end <= last {
            return Err(bad(format!("end offset {end} after {last}")));
        }
        last = end;
    }
    if last != header.size {
        return Err(bad(format!("entries end at {last}, header says {}", header.size)));
    }
    Ok(header)
}

/// A verified, memory-mapped dynamic index.
pub struct DynamicIndex {
    path: PathBuf,
    header: DidxHeader,
    map: Option<Mmap>,
}

impl DynamicIndex {
    pub fn open(path: &Path) -> Result<DynamicIndex, DidxError> {
        let io = |source| DidxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // SAFETY: index files are immutable once written (as for .fidx).
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let header = parse(path, map.as_deref().unwrap_or(&[]))?;
        Ok(DynamicIndex {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &DidxHeader {
        &self.header
    }

    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count
    }

    fn entry(&self, i: u64) -> &[u8] {
        let at = DIDX_HEADER_LEN + i as usize * DIDX_ENTRY_LEN;
        &self.map.as_deref().expect("non-empty index")[at..at + DIDX_ENTRY_LEN]
    }

    /// End offset (exclusive) of chunk `i`.
    pub fn end(&self, i: u64) -> u64 {
        u64::from_le_bytes(self.entry(i)[..8].try_into().expect("8 bytes"))
    }

    pub fn start(&self, i: u64) -> u64 {
        if i == 0 {
            0
        } else {
            self.end(i - 1)
        }
    }

    pub fn digest(&self, i: u64) -> Digest {
        Digest(self.entry(i)[8..40].try_into().expect("32 bytes"))
    }

    /// The chunk holding stream offset `offset` (None past the end).
    pub(crate) fn chunk_at(&self, offset: u64) -> Option<u64> {
        if offset >= self.header.size {
            return None;
        }
        let (mut lo, mut hi) = (0u64, self.header.chunk_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.end(mid) <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

/// Writes a dynamic index, entries in stream order; the header goes last.
pub(crate) struct DidxWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    size: u64,
    count: u64,
}

impl DidxWriter {
    pub(crate) fn create(path: &Path) -> Result<DidxWriter, DidxError> {
        let io = |source| DidxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(&[0u8; DIDX_HEADER_LEN]).map_err(io)?;
        Ok(DidxWriter {
            path: path.to_path_buf(),
            out,
            hasher: blake3::Hasher::new(),
            size: 0,
            count: 0,
        })
    }

    /// Appends a chunk of `len` bytes (> 0).
    pub(crate) fn push(&mut self, len: u64, digest: &Digest) -> Result<(), DidxError> {
        debug_assert!(len > 0);
        self.size += len;
        self.count += 1;
        let mut e = [0u8; DIDX_ENTRY_LEN];
        e[..8].copy_from_slice(&self.size.to_le_bytes());
        e[8..].copy_from_slice(&digest.0);
        self.hasher.update(&e);
        self.out.write_all(&e).map_err(|source| DidxError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the header and fsyncs.
    pub(crate) fn finish(self, uuid: [u8; 16], ctime: i64) -> Result<DidxHeader, DidxError> {
        let io = |source| DidxError::Io {
            path: self.path.clone(),
            source,
        };
        let header = DidxHeader {
            uuid,
            ctime,
            size: self.size,
            chunk_count: self.count,
            checksum: Digest(*self.hasher.finalize().as_bytes()),
        };
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        use std::os::unix::fs::FileExt;
        file.write_all_at(&header.encode(), 0).map_err(io)?;
        file.sync_all().map_err(io)?;
        crate::failpoint::hit("didx-synced");
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.didx");
        let mut w = DidxWriter::create(&path).unwrap();
        for (i, len) in [10u64, 5, 100].iter().enumerate() {
            w.push(*len, &Digest::of(&[i as u8])).unwrap();
        }
        let h = w.finish([1; 16], 7).unwrap();
        assert_eq!((h.size, h.chunk_count), (115, 3));
        let idx = DynamicIndex::open(&path).unwrap();
        assert_eq!(idx.header(), &h);
        assert_eq!(idx.chunk_at(0), Some(0));
        assert_eq!(idx.chunk_at(9), Some(0));
        assert_eq!(idx.chunk_at(10), Some(1));
        assert_eq!(idx.chunk_at(15), Some(2));
        assert_eq!(idx.chunk_at(115), None);
        assert_eq!((idx.start(2), idx.end(2)), (15, 115));
        assert_eq!(idx.digest(1), Digest::of(&[1]));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[DIDX_HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            parse(&path, &bytes),
            Err(DidxError::EntryChecksum { .. })
        ));
        // An empty stream is a valid index.
        let empty = dir.path().join("e.didx");
        DidxWriter::create(&empty).unwrap().finish([0; 16], 0).unwrap();
        assert_eq!(DynamicIndex::open(&empty).unwrap().chunk_at(0), None);
    }
}
