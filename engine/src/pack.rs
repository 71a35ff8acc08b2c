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
        fs::rename(&self.partial, &final_path).map_err(io_err(&final_path))?;
        let dir = final_path.parent().expect("pack path has a parent");
        sync_dir(dir).map_err(io_err(dir))?;
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

/// Walks a pack's record headers in order: what an index rebuild reads.
/// Fails at the first damaged or truncated record.
pub fn scan(path: &Path) -> Result<Vec<(u64, RecordHeader)>, PackError> {
    let scan = scan_until_damage(path)?;
    match scan.damage {
        None => Ok(scan.records),
        Some(damage) => Err(damage),
    }
}

/// The intact records of a pack, in order, and the damage that ended the walk.
pub struct PackScan {
    pub records: Vec<(u64, RecordHeader)>,
    pub damage: Option<PackError>,
}

/// Like [`scan`], but returns the intact records before the first damaged
/// one together with the damage, so a repair can keep what is readable.
pub fn scan_until_damage(path: &Path) -> Result<PackScan, PackError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut head = [0u8; PACK_HEADER_LEN as usize];
    if file.read_exact_at(&mut head, 0).is_err() || head[0..8] != PACK_MAGIC {
        return Err(PackError::BadHeader {
            path: path.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    let mut offset = PACK_HEADER_LEN;
    let mut hdr = [0u8; HEADER_LEN];
    while offset < size {
        let have = (size - offset).min(HEADER_LEN as u64) as usize;
        file.read_exact_at(&mut hdr[..have], offset)
            .map_err(io_err(path))?;
        let damage = |source| {
            Some(PackError::Record {
                path: path.to_path_buf(),
                offset,
                source,
            })
        };
        let header = match RecordHeader::decode(&hdr[..have]) {
            Ok(h) => h,
            Err(e) => {
                return Ok(PackScan {
                    records: out,
                    damage: damage(e),
                })
            }
        };
        if offset + header.record_len() > size {
            let e = RecordError::Truncated {
                need: header.record_len() as usize,
                have: (size - offset) as usize,
            };
            return Ok(PackScan {
                records: out,
                damage: damage(e),
            });
        }
        out.push((offset, header));
        offset += header.record_len();
    }
    Ok(PackScan {
        records: out,
        damage: None,
    })
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
        assert_eq!(scanned.len(), 5);
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
        assert!(matches!(scan(&path), Err(PackError::Record { .. })));
    }

    #[test]
    fn pack_id_hex_round_trip() {
        let id = PackId::random();
        assert_eq!(PackId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(PackId::from_hex("xyz"), None);
    }
}
