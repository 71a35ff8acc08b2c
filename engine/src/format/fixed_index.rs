//! Fixed index files (`.fidx`): the digest of every chunk of a disk image, in
//! order, so that chunk `i` is found at `HEADER_LEN + 32 * i`. Random access
//! by offset / chunk size; mmap-able. Layout: format-spec/fixed-index.md.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::Digest;
use crate::error::{io_kind, Classify, Context, ErrorKind};

pub(crate) const FIDX_MAGIC: [u8; 8] = *b"HRDFIDX\0";
pub(crate) const FIDX_VERSION: u32 = 1;
pub(crate) const FIDX_HEADER_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum FidxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a hoard fixed index (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("{path}: unsupported fixed index version {version}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: fixed index header checksum mismatch")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: fixed index header is invalid: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("{path}: fixed index is {actual} bytes, expected {expected} (truncated or padded)")]
    BadLength {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: fixed index digest checksum mismatch (index damaged)")]
    DigestChecksum { path: PathBuf },
}

impl Classify for FidxError {
    fn kind(&self) -> ErrorKind {
        match self {
            FidxError::Io { source, .. } => io_kind(source),
            _ => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            FidxError::Io { path, .. }
            | FidxError::BadMagic { path }
            | FidxError::UnsupportedVersion { path, .. }
            | FidxError::HeaderChecksum { path }
            | FidxError::BadHeader { path, .. }
            | FidxError::BadLength { path, .. }
            | FidxError::DigestChecksum { path } => Context::path(path),
        }
    }
}

/// The header fields of a fixed index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FidxHeader {
    pub uuid: [u8; 16],
    /// Creation time, seconds since the Unix epoch.
    pub ctime: i64,
    pub image_size: u64,
    pub chunk_size: u64,
    /// BLAKE3 of the digest array.
    pub checksum: Digest,
}

impl FidxHeader {
    pub fn chunk_count(&self) -> u64 {
        self.image_size.div_ceil(self.chunk_size)
    }

    pub fn encode(&self) -> [u8; FIDX_HEADER_LEN] {
        let mut h = [0u8; FIDX_HEADER_LEN];
        h[0..8].copy_from_slice(&FIDX_MAGIC);
        h[8..12].copy_from_slice(&FIDX_VERSION.to_le_bytes());
        h[16..32].copy_from_slice(&self.uuid);
        h[32..40].copy_from_slice(&self.ctime.to_le_bytes());
        h[40..48].copy_from_slice(&self.image_size.to_le_bytes());
        h[48..56].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[56..88].copy_from_slice(&self.checksum.0);
        let crc = crc32c::crc32c(&h[..124]);
        h[124..128].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Parses and fully verifies index bytes: header, length and digest checksum.
/// Every `.fidx` read goes through here; it is also the fuzz target.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<FidxHeader, FidxError> {
    let p = || path.to_path_buf();
    let h: &[u8; FIDX_HEADER_LEN] = match bytes.get(..FIDX_HEADER_LEN).and_then(|s| s.try_into().ok()) {
        Some(h) => h,
        None if bytes.len() >= 8 && bytes[..8] != FIDX_MAGIC => {
            return Err(FidxError::BadMagic { path: p() })
        }
        None => {
            return Err(FidxError::BadLength {
                path: p(),
                expected: FIDX_HEADER_LEN as u64,
                actual: bytes.len() as u64,
            })
        }
    };
    if h[0..8] != FIDX_MAGIC {
        return Err(FidxError::BadMagic { path: p() });
    }
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != FIDX_VERSION {
        return Err(FidxError::UnsupportedVersion { path: p(), version });
    }
    if crc32c::crc32c(&h[..124]) != u32::from_le_bytes(h[124..128].try_into().expect("4 bytes")) {
        return Err(FidxError::HeaderChecksum { path: p() });
    }
    let header = FidxHeader {
        uuid: h[16..32].try_into().expect("16 bytes"),
        ctime: u64_at(32) as i64,
        image_size: u64_at(40),
        chunk_size: u64_at(48),
        checksum: Digest(h[56..88].try_into().expect("32 bytes")),
    };
    ChunkSize::new(header.chunk_size).map_err(|e| FidxError::BadHeader {
        path: p(),
        reason: e.to_string(),
    })?;
    let expected = header
        .chunk_count()
        .checked_mul(Digest::LEN as u64)
        .and_then(|n| n.checked_add(FIDX_HEADER_LEN as u64))
        .ok_or_else(|| FidxError::BadHeader {
            path: p(),
            reason: "image size out of range".into(),
        })?;
    if expected != bytes.len() as u64 {
        return Err(FidxError::BadLength {
            path: p(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    if Digest::of(&bytes[FIDX_HEADER_LEN..]) != header.checksum {
        return Err(FidxError::DigestChecksum { path: p() });
    }
    Ok(header)
}

/// A verified, memory-mapped fixed index.
pub struct FixedIndex {
    path: PathBuf,
    header: FidxHeader,
    map: Mmap,
}

impl FixedIndex {
    pub fn open(path: &Path) -> Result<FixedIndex, FidxError> {
        let io = |source| FidxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(FidxError::BadLength {
                path: path.to_path_buf(),
                expected: FIDX_HEADER_LEN as u64,
                actual: 0,
            });
        }
        // SAFETY: index files are immutable once written; hoard never modifies
        // a finished index in place. Another process truncating it under us
        // is outside the contract (as for any mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse(path, &map)?;
        Ok(FixedIndex {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &FidxHeader {
        &self.header
    }

    pub fn chunk_size(&self) -> ChunkSize {
        ChunkSize::new(self.header.chunk_size).expect("validated at open")
    }

    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count()
    }

    pub fn digest(&self, index: u64) -> Digest {
        let at = FIDX_HEADER_LEN + index as usize * Digest::LEN;
        Digest(self.map[at..at + Digest::LEN].try_into().expect("32 bytes"))
    }
}

/// Writes a fixed index. Digests may arrive in any order (from parallel
/// workers); the header is written last, so an unfinished file never verifies.
pub struct FixedIndexWriter {
    path: PathBuf,
    file: File,
    image_size: u64,
    chunk_size: ChunkSize,
}

impl FixedIndexWriter {
    pub fn create(
        path: &Path,
        image_size: u64,
        chunk_size: ChunkSize,
    ) -> Result<FixedIndexWriter, FidxError> {
        let io = |source| FidxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        let len = FIDX_HEADER_LEN as u64 + chunk_size.count(image_size) * Digest::LEN as u64;
        file.set_len(len).map_err(io)?;
        Ok(FixedIndexWriter {
            path: path.to_path_buf(),
            file,
            image_size,
            chunk_size,
        })
    }

    pub fn set(&self, index: u64, digest: &Digest) -> Result<(), FidxError> {
        let at = FIDX_HEADER_LEN as u64 + index * Digest::LEN as u64;
        self.file
            .write_all_at(&digest.0, at)
            .map_err(|source| FidxError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Computes the digest checksum, writes the header and fsyncs.
    pub fn finish(self, uuid: [u8; 16], ctime: i64) -> Result<FidxHeader, FidxError> {
        let io = |source| FidxError::Io {
            path: self.path.clone(),
            source,
        };
        let mut hasher = blake3::Hasher::new();
        let total = self.chunk_size.count(self.image_size) * Digest::LEN as u64;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], FIDX_HEADER_LEN as u64 + done)
                .map_err(io)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        let header = FidxHeader {
            uuid,
            ctime,
            image_size: self.image_size,
            chunk_size: self.chunk_size.bytes(),
            checksum: Digest(*hasher.finalize().as_bytes()),
        };
        self.file.write_all_at(&header.encode(), 0).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        crate::failpoint::hit("fidx-synced");
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dir: &Path, size: u64) -> (PathBuf, Vec<Digest>) {
        let path = dir.join("disk.img.fidx");
        let cs = ChunkSize::new(65536).unwrap();
        let w = FixedIndexWriter::create(&path, size, cs).unwrap();
        let digests: Vec<Digest> = (0..cs.count(size))
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        for (i, d) in digests.iter().enumerate().rev() {
            w.set(i as u64, d).unwrap();
        }
        w.finish([7; 16], 1_700_000_000).unwrap();
        (path, digests)
    }

    #[test]
    fn write_then_read_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0u64, 1, 65536, 65537, 10 * 65536 + 3] {
            let _ = std::fs::remove_file(dir.path().join("disk.img.fidx"));
            let (path, digests) = build(dir.path(), size);
            let idx = FixedIndex::open(&path).unwrap();
            assert_eq!(idx.header().image_size, size);
            assert_eq!(idx.chunk_count(), digests.len() as u64);
            for (i, d) in digests.iter().enumerate() {
                assert_eq!(idx.digest(i as u64), *d);
            }
        }
    }

    #[test]
    fn damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = build(dir.path(), 5 * 65536);
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8]| parse(&path, bytes).unwrap_err();
        assert!(matches!(
            check(&good[..good.len() - 1]),
            FidxError::BadLength { .. }
        ));
        assert!(matches!(check(&good[..10]), FidxError::BadLength { .. }));
        let mut bad = good.clone();
        bad[FIDX_HEADER_LEN + 3] ^= 1;
        assert!(matches!(check(&bad), FidxError::DigestChecksum { .. }));
        let mut bad = good.clone();
        bad[45] ^= 1;
        assert!(matches!(check(&bad), FidxError::HeaderChecksum { .. }));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(check(&bad), FidxError::BadMagic { .. }));
        assert!(check(&good[..100]).to_string().contains("disk.img.fidx"));
        assert!(parse(&path, &good).is_ok());
    }

    #[test]
    fn header_golden_bytes() {
        let h = FidxHeader {
            uuid: [1; 16],
            ctime: 2,
            image_size: 3,
            chunk_size: 65536,
            checksum: Digest([4; 32]),
        };
        let b = h.encode();
        assert_eq!(&b[0..12], b"HRDFIDX\0\x01\0\0\0");
        assert_eq!(b[32], 2);
        assert_eq!(b[40], 3);
        assert_eq!(&b[48..52], &[0, 0, 1, 0]);
        assert!(b[88..124].iter().all(|x| *x == 0));
    }
}
