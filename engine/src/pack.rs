//! Packs: append-only files of chunk records.
//!
//! Each writer owns one open pack at a time, so concurrent backups never share
//! a file. A pack is written as `<id>.pack.partial`, then fsynced and renamed
//! to `<id>.pack` when sealed; only then are its records committed to the
//! index. Layout: format-spec/pack.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::chunk::{RecordError, RecordHeader, HEADER_LEN};

pub const PACK_MAGIC: [u8; 8] = *b"HRDPACK\0";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 32;
/// A pack is sealed once it holds this many bytes.
pub const PACK_TARGET_SIZE: u64 = 128 * 1024 * 1024;

/// 128-bit random pack name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn random() -> PackId {
        PackId(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        crate::digest::to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<PackId> {
        crate::digest::from_hex(s).map(PackId)
    }

    /// The id a pack file's name (`ID.pack`) gives.
    pub fn from_path(path: &Path) -> Option<PackId> {
        path.file_stem()?.to_str().and_then(PackId::from_hex)
    }

    /// `packs/<first two hex digits>/<32 hex digits>.pack`, relative to the store.
    pub fn path(&self, packs_dir: &Path) -> PathBuf {
        let hex = self.to_hex();
        packs_dir.join(&hex[..2]).join(format!("{hex}.pack"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a hoard pack (bad header)")]
    BadHeader { path: PathBuf },
    #[error("{path}: record at offset {offset}: {source}")]
    Record {
        path: PathBuf,
        offset: u64,
        source: RecordError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_header(id: PackId) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h[16..32].copy_from_slice(&id.0);
    h
}

/// The one open pack of a writer.
pub struct PackWriter {
    id: PackId,
    partial: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl PackWriter {
    pub fn create(packs_dir: &Path) -> Result<PackWriter, PackError> {
        let id = PackId::random();
        let final_path = id.path(packs_dir);
        let dir = final_path.parent().expect("pack path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let partial = final_path.with_extension("pack.partial");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&encode_header(id)).map_err(io_err(&partial))?;
        Ok(PackWriter {
            id,
            partial,
            out,
            len: PACK_HEADER_LEN,
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

    /// Appends one encoded record; returns its offset in the pack.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, PackError> {
        let offset = self.len;
        self.out.write_all(record).map_err(io_err(&self.partial))?;
        self.len += record.len() as u64;
        crate::failpoint::hit("pack-appended");
        Ok(offset)
    }

    /// Makes the pack durable under its final name. Records may be committed
    /// to the index only after this returns.
    pub fn seal(self) -> Result<PackId, PackError> {
        let final_path = self.partial.with_extension("");
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.partial)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.partial))?;
        crate::failpoint::hit("pack-fsynced");
        fs::rename(&self.partial, &final_path).map_err(io_err(&final_path))?;
        crate::failpoint::hit("pack-renamed");
        let dir = final_path.parent().expect("pack path has a parent");
        sync_dir(dir).map_err(io_err(dir))?;
        crate::failpoint::hit("pack-sealed");
        Ok(self.id)
    }

    /// Drops an unsealed pack: none of its records were committed.
    pub fn abort(self) {
        let _ = fs::remove_file(&self.partial);
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A sealed pack mapped read-only, for readers that walk many records.
///
/// Sealed packs are never changed in place: GC deletes or replaces them
/// whole, and a deleted file stays mapped until unmapped. Only truncation by
/// something outside hoard while the map is in use could fault the reader.
pub struct PackMap {
    path: PathBuf,
    map: Mmap,
}

impl PackMap {
    pub fn open(path: &Path) -> Result<PackMap, PackError> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: sealed packs are immutable (above); every record slice is
        // bounds-checked against the length mapped here.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let _ = map.advise(Advice::Sequential);
        Ok(PackMap {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole pack.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The `len` bytes of the record at `offset`.
    pub fn record(&self, offset: u64, len: u32) -> Result<&[u8], PackError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        self.map
            .get(start..start.saturating_add(len as usize))
            .ok_or_else(|| PackError::Record {
                path: self.path.clone(),
                offset,
                source: RecordError::Truncated {
                    need: len as usize,
                    have: self.map.len().saturating_sub(start),
                },
            })
    }

    /// Drops a range already read from this process's resident set, so
    /// walking a store does not look like holding it in memory. The page
    /// cache keeps the pages.
    pub fn release(&self, offset: u64, len: u32) {
        let page = 4096;
        let start = offset as usize / page * page;
        let end = (offset as usize + len as usize).min(self.map.len());
        if end > start {
            // SAFETY: the map is read-only and file-backed: discarded pages
            // are read from the file again if touched, never zero-filled.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Reads the record at `offset` (of total length `len`) from an open pack
/// into a reusable buffer.
pub fn read_record_into(
    file: &File,
    path: &Path,
    offset: u64,
    len: u32,
    buf: &mut Vec<u8>,
) -> Result<(), PackError> {
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, offset).map_err(|e| {
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

/// A byte range of a pack that holds no intact record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedRange {
    pub start: u64,
    pub end: u64,
    pub reason: String,
}

/// What a walk over a pack found: every record whose header is intact and
/// whose bytes lie inside the file, and every range between them that is not
/// one (a damaged pack header, a damaged record header, a truncated tail).
#[derive(Debug, Default)]
pub struct PackScan {
    pub records: Vec<(u64, RecordHeader)>,
    pub damaged: Vec<DamagedRange>,
}

impl PackScan {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// Walks a pack's records: what an index rebuild, a check and GC read.
///
/// Records are self-describing, so a damaged one does not hide the rest:
/// after a header that does not decode, the walk resynchronises at the next
/// offset that holds a record whose header *and* payload CRC32C check out
/// (a chance match needs two 32-bit checksums to agree). Payloads of records
/// found in sequence are not checked here; callers check what they use.
/// Fails only when the file cannot be read at all.
pub fn scan(path: &Path) -> Result<PackScan, PackError> {
    let map = PackMap::open(path)?;
    Ok(scan_bytes(&map.map, PackId::from_path(path)))
}

/// [`scan`] over a pack's bytes; `id` is the pack id its name gives. Also
/// the fuzz target.
pub fn scan_bytes(bytes: &[u8], id: Option<PackId>) -> PackScan {
    let size = bytes.len() as u64;
    let mut scan = PackScan::default();
    let header_len = PACK_HEADER_LEN.min(size);
    let head = &bytes[..header_len as usize];
    let header_ok = head.len() == PACK_HEADER_LEN as usize
        && head[0..8] == PACK_MAGIC
        && head[8..12] == PACK_VERSION.to_le_bytes()
        && id.is_none_or(|id| head[16..32] == id.0);
    if !header_ok {
        scan.damaged.push(DamagedRange {
            start: 0,
            end: header_len,
            reason: "damaged pack header".into(),
        });
    }
    let mut offset = PACK_HEADER_LEN;
    while offset < size {
        match record_at(bytes, offset) {
            Ok(h) => {
                scan.records.push((offset, h));
                offset += h.record_len();
            }
            Err(e) => {
                let next = resync(bytes, offset + 1);
                scan.damaged.push(DamagedRange {
                    start: offset,
                    end: next,
                    reason: e.to_string(),
                });
                offset = next;
            }
        }
    }
    scan
}

/// The header of the record at `offset`, if it decodes and the record ends
/// inside the file.
fn record_at(bytes: &[u8], offset: u64) -> Result<RecordHeader, RecordError> {
    let rest = &bytes[offset as usize..];
    let h = RecordHeader::decode(rest)?;
    if h.record_len() > rest.len() as u64 {
        return Err(RecordError::Truncated {
            need: h.record_len() as usize,
            have: rest.len(),
        });
    }
    Ok(h)
}

/// The first offset at or after `from` where a whole, CRC-intact record
/// starts; the file's end if there is none.
fn resync(bytes: &[u8], from: u64) -> u64 {
    let mut at = from as usize;
    while let Some(pos) = bytes
        .get(at..)
        .and_then(|rest| rest.windows(4).position(|w| w == crate::chunk::RECORD_MAGIC))
    {
        let candidate = at + pos;
        if let Ok(h) = record_at(bytes, candidate as u64) {
            let payload = &bytes[candidate + HEADER_LEN..candidate + h.record_len() as usize];
            if crc32c::crc32c(payload) == h.payload_crc {
                return candidate as u64;
            }
        }
        at = candidate + 1;
    }
    bytes.len() as u64
}

/// Every sealed pack of a store's `packs/` directory, sorted by name.
pub fn list_sealed(packs_dir: &Path) -> Result<Vec<(PackId, PathBuf)>, PackError> {
    let mut out = Vec::new();
    let subdirs = match fs::read_dir(packs_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(packs_dir)(e)),
    };
    for sub in subdirs {
        let sub = sub.map_err(io_err(packs_dir))?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in fs::read_dir(&sub).map_err(io_err(&sub))? {
            let p = f.map_err(io_err(&sub))?.path();
            let id = p
                .extension()
                .filter(|e| *e == "pack")
                .and_then(|_| p.file_stem()?.to_str())
                .and_then(PackId::from_hex);
            if let Some(id) = id {
                out.push((id, p));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkDecoder, ChunkEncoder, Compression};
    use crate::digest::Digest;

    #[test]
    fn write_seal_scan_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        let mut enc = ChunkEncoder::new(Compression::Zstd(1)).unwrap();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 70_000]).collect();
        let mut locs = Vec::new();
        for c in &chunks {
            let rec = enc.encode(c, Digest::of(c));
            locs.push((w.append(&rec).unwrap(), rec.len() as u32));
        }
        let id = w.seal().unwrap();
        let path = id.path(dir.path());
        assert!(path.exists());
        let scanned = scan(&path).unwrap();
        assert!(scanned.is_clean());
        assert_eq!(scanned.records.len(), 5);
        let file = File::open(&path).unwrap();
        let mut dec = ChunkDecoder::new().unwrap();
        for ((off, len), c) in locs.iter().zip(&chunks) {
            let mut rec = Vec::new();
            read_record_into(&file, &path, *off, *len, &mut rec).unwrap();
            assert_eq!(&dec.decode(&rec, &Digest::of(c)).unwrap(), c);
        }
        // A truncated pack is reported at the damaged record.
        let size = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(size - 3)
            .unwrap();
        let cut = scan(&path).unwrap();
        assert_eq!(cut.records.len(), 4);
        assert_eq!(cut.damaged.len(), 1);
        assert!(cut.damaged[0].reason.contains("truncated"), "{:?}", cut.damaged);
    }

    fn pack_of(chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>) {
        let id = PackId::random();
        let mut enc = ChunkEncoder::new(Compression::None).unwrap();
        let mut bytes = encode_header(id).to_vec();
        let mut offsets = Vec::new();
        for c in chunks {
            offsets.push(bytes.len() as u64);
            bytes.extend(enc.encode(c, Digest::of(c)));
        }
        (bytes, offsets)
    }

    #[test]
    fn scan_resynchronises_after_damaged_headers() {
        let chunks: Vec<Vec<u8>> = (0..5u64)
            .map(|i| (0..3000).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let (mut bytes, offsets) = pack_of(&chunks);
        bytes[3] ^= 1; // pack header
        bytes[offsets[1] as usize + 9] ^= 1; // record 2's header
        let scan = scan_bytes(&bytes, None);
        let found: Vec<u64> = scan.records.iter().map(|(o, _)| *o).collect();
        assert_eq!(found, [offsets[0], offsets[2], offsets[3], offsets[4]]);
        let ranges: Vec<(u64, u64)> = scan.damaged.iter().map(|d| (d.start, d.end)).collect();
        assert_eq!(ranges, [(0, 32), (offsets[1], offsets[2])]);
        // Garbage to the end: one range, nothing invented.
        let mut tail = bytes[..offsets[3] as usize].to_vec();
        tail.extend(std::iter::repeat_n(0xAB, 5000));
        let scan = scan_bytes(&tail, None);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.damaged.last().unwrap().end, tail.len() as u64);
    }

    #[test]
    fn a_record_stored_inside_a_raw_payload_is_a_real_record() {
        // A backup of a pack stores records inside a raw chunk: after damage
        // the walk may find them, and what it finds is intact content.
        let inner = pack_of(&[vec![9u8; 500]]).0;
        let (mut bytes, offsets) = pack_of(&[vec![1u8; 100], inner.clone(), vec![2u8; 100]]);
        bytes[offsets[1] as usize] ^= 1;
        let scan = scan_bytes(&bytes, None);
        let digests: Vec<Digest> = scan.records.iter().map(|(_, h)| h.digest).collect();
        assert_eq!(
            digests,
            [
                Digest::of(&[1u8; 100]),
                Digest::of(&[9u8; 500]),
                Digest::of(&[2u8; 100])
            ]
        );
        assert_eq!(scan.records[2].0, offsets[2]);
    }

    #[test]
    fn pack_id_hex_round_trip() {
        let id = PackId::random();
        assert_eq!(PackId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(PackId::from_hex("xyz"), None);
    }
}
