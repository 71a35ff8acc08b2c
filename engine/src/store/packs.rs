//! Packs in a store: the one open pack of a writer, sealed through the
//! store's [`ObjectBackend`] (visible only when whole), whole packs mapped
//! for walks, ranged record reads, and the listing of sealed packs. Each
//! writer owns one open pack at a time, so concurrent backups never share
//! an object; only sealed packs' records are committed to the index. The
//! bytes are `format::pack`'s.

use std::io;
use std::path::{Path, PathBuf};

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};
use crate::chunking::digest::Digest;
use crate::format::chunk::RecordError;
use crate::format::pack::{
    encode_header, encode_trailer, scan_bytes, Listed, PackError, PackId, PackScan, PACKS_PREFIX,
    PACK_HEADER_LEN, PACK_VERSION,
};

/// Wraps an I/O error of the pack at `path`; the path is copied only on error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The one open pack of a writer.
pub struct PackWriter {
    id: PackId,
    location: PathBuf,
    out: Box<dyn ObjectWriter>,
    len: u64,
    listed: Vec<Listed>,
}

impl PackWriter {
    pub fn create(backend: &dyn ObjectBackend) -> Result<PackWriter, PackError> {
        let id = PackId::random();
        let name = id.name();
        let location = backend.location(&name);
        let mut out = backend.create(&name).map_err(io_err(&location))?;
        out.write_all(&encode_header(id, PACK_VERSION))
            .map_err(io_err(&location))?;
        Ok(PackWriter {
            id,
            location,
            out,
            len: PACK_HEADER_LEN,
            listed: Vec::new(),
        })
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == PACK_HEADER_LEN
    }

    /// Appends one encoded record (as [`crate::format::chunk::ChunkEncoder`]
    /// makes them) of the chunk `digest`, `raw_len` bytes long; returns its
    /// offset in the pack.
    pub fn append(&mut self, record: &[u8], digest: Digest, raw_len: u32) -> Result<u64, PackError> {
        let offset = self.len;
        self.out.write_all(record).map_err(io_err(&self.location))?;
        self.len += record.len() as u64;
        self.listed.push(Listed {
            digest,
            offset,
            record_len: record.len() as u32,
            raw_len,
        });
        crate::failpoint::hit("pack-appended");
        Ok(offset)
    }

    /// Writes the trailer and makes the pack durable under its final name.
    /// Records may be committed to the index only after this returns.
    pub(crate) fn seal(mut self) -> Result<PackId, PackError> {
        let trailer = encode_trailer(&self.listed);
        self.out.write_all(&trailer).map_err(io_err(&self.location))?;
        self.out.finish().map_err(io_err(&self.location))?;
        crate::failpoint::hit("pack-sealed");
        Ok(self.id)
    }

    /// Drops an unsealed pack: none of its records were committed.
    pub fn abort(self) {
        self.out.abort();
    }
}

/// A sealed pack in memory (mapped, for a local store), for readers that
/// walk many records.
pub(crate) struct PackMap {
    path: PathBuf,
    bytes: ObjectBytes,
}

impl PackMap {
    pub(crate) fn open(backend: &dyn ObjectBackend, id: PackId) -> Result<PackMap, PackError> {
        let name = id.name();
        let path = backend.location(&name);
        let bytes = backend.get(&name).map_err(io_err(&path))?;
        Ok(PackMap { path, bytes })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The whole pack.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `len` bytes of the record at `offset`.
    pub(crate) fn record(&self, offset: u64, len: u32) -> Result<&[u8], PackError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        self.bytes
            .get(start..start.saturating_add(len as usize))
            .ok_or_else(|| PackError::Record {
                path: self.path.clone(),
                offset,
                source: RecordError::Truncated {
                    need: len as usize,
                    have: self.bytes.len().saturating_sub(start),
                },
            })
    }

    /// Drops a range already read from this process's resident set.
    pub(crate) fn release(&self, offset: u64, len: u32) {
        self.bytes.release(offset, len as u64);
    }
}

/// Reads the record at `offset` (of total length `len`) from an open pack
/// into a reusable buffer.
pub(crate) fn read_record_into(
    obj: &dyn ObjectRead,
    path: &Path,
    offset: u64,
    len: u32,
    buf: &mut Vec<u8>,
) -> Result<(), PackError> {
    buf.resize(len as usize, 0);
    obj.read_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            PackError::Record {
                path: path.to_path_buf(),
                offset,
                source: RecordError::Truncated {
                    need: len as usize,
                    have: 0,
                },
            }
        } else {
            io_err(path)(e)
        }
    })
}

/// Walks sealed pack `id` ([`scan_bytes`]); fails only when the pack
/// cannot be read at all.
pub(crate) fn scan(backend: &dyn ObjectBackend, id: PackId) -> Result<PackScan, PackError> {
    let map = PackMap::open(backend, id)?;
    Ok(scan_bytes(map.bytes(), Some(id)))
}

/// Every sealed pack of a backend, sorted by name. Quarantined packs
/// (`.pack.bad`) and unfinished writes are not among them.
pub(crate) fn list_sealed(backend: &dyn ObjectBackend) -> Result<Vec<(PackId, ObjectInfo)>, PackError> {
    let listed = backend
        .list(PACKS_PREFIX)
        .map_err(io_err(&backend.location(PACKS_PREFIX)))?;
    Ok(listed
        .into_iter()
        .filter_map(|o| Some((PackId::from_name(&o.name)?, o)))
        .collect())
}

/// `hoard bench`'s write path: appends `record` (chunk `d`, `raw_len`
/// bytes) to one new pack in directory `dir` until `bytes` of content are
/// in it, and seals it (durable). Returns the content bytes written.
pub(crate) fn write_one_pack(
    dir: &Path,
    record: &[u8],
    d: Digest,
    raw_len: u32,
    bytes: u64,
) -> io::Result<u64> {
    let io = |e: PackError| io::Error::other(e.to_string());
    let mut w = PackWriter::create(&super::local_dir::LocalDir::new(dir)).map_err(io)?;
    let mut written = 0u64;
    while written < bytes {
        w.append(record, d, raw_len).map_err(io)?;
        written += raw_len as u64;
    }
    w.seal().map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::digest::Digest;
    use crate::format::chunk::{ChunkEncoder, Compression};
    use crate::format::chunk_decoder::ChunkDecoder;
    use crate::format::pack::read_listing;
    use crate::store::memory::Memory;

    #[test]
    fn write_seal_scan_read() {
        let backend = Memory::new();
        let mut w = PackWriter::create(&backend).unwrap();
        let mut enc = ChunkEncoder::new(Compression::Zstd(1)).unwrap();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 70_000]).collect();
        let mut locs = Vec::new();
        for c in &chunks {
            let rec = enc.encode(c, Digest::of(c));
            locs.push((
                w.append(&rec, Digest::of(c), c.len() as u32).unwrap(),
                rec.len() as u32,
            ));
        }
        let id = w.seal().unwrap();
        let scanned = scan(&backend, id).unwrap();
        assert!(scanned.is_clean(), "{:?}", scanned.damaged);
        assert_eq!(scanned.records.len(), 5);
        let obj = backend.open(&id.name()).unwrap();
        let mut dec = ChunkDecoder::new().unwrap();
        for ((off, len), c) in locs.iter().zip(&chunks) {
            let mut rec = Vec::new();
            read_record_into(obj.as_ref(), Path::new("p"), *off, *len, &mut rec).unwrap();
            assert_eq!(&dec.decode(&rec, &Digest::of(c)).unwrap(), c);
        }
        // The trailer alone says the same as the walk.
        let size = backend.get(&id.name()).unwrap().len() as u64;
        let listed = read_listing(|b, at| obj.read_at(b, at), size).unwrap().unwrap();
        let walked: Vec<(u64, Digest)> = scanned.records.iter().map(|(o, h)| (*o, h.digest)).collect();
        let read: Vec<(u64, Digest)> = listed.iter().map(|l| (l.offset, l.digest)).collect();
        assert_eq!(read, walked);
        // A pack cut inside its last record: the trailer is gone and the
        // last record is reported, truncated.
        let (last, len) = locs[4];
        backend
            .damage(&id.name(), |b| b.truncate((last + len as u64 - 3) as usize))
            .unwrap();
        let cut = scan(&backend, id).unwrap();
        assert_eq!(cut.records.len(), 4);
        assert_eq!(cut.damaged.len(), 1);
        assert!(cut.damaged[0].reason.contains("truncated"), "{:?}", cut.damaged);
        let obj = backend.open(&id.name()).unwrap();
        assert_eq!(
            read_listing(|b, at| obj.read_at(b, at), last + len as u64 - 3).unwrap(),
            None
        );
    }
}
