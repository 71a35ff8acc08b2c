//! The pack format: a header, chunk records back to back, and (version 2)
//! a trailer that lists the records, so a pack's contents can be known from
//! its last bytes alone. Layout: format-spec/pack.md. Writing and reading
//! packs in a store is `store::packs`.

use std::io;
use std::path::PathBuf;

use crate::chunking::digest::Digest;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::{RecordError, RecordHeader, HEADER_LEN};

pub(crate) const PACK_MAGIC: [u8; 8] = *b"HRDPACK\0";
/// The version this hoard writes; it reads 1 and 2.
pub(crate) const PACK_VERSION: u32 = 2;
pub(crate) const PACK_HEADER_LEN: u64 = 32;
/// A pack is sealed once it holds this many bytes.
pub(crate) const PACK_TARGET_SIZE: u64 = 128 * 1024 * 1024;
pub(crate) const TRAILER_MAGIC: [u8; 8] = *b"HRDPLST\0";
/// Bytes of one trailer entry: digest, offset, record length, raw length.
pub(crate) const TRAILER_ENTRY_LEN: u64 = 48;
/// Bytes of the trailer's fixed end: count, CRC32C, reserved, magic.
pub(crate) const TRAILER_END_LEN: u64 = 24;

/// 128-bit random pack name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn random() -> PackId {
        PackId(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        crate::chunking::digest::to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<PackId> {
        crate::chunking::digest::from_hex(s).map(PackId)
    }

    /// The id of a sealed pack's object name (`packs/XX/ID.pack`).
    pub fn from_name(name: &str) -> Option<PackId> {
        let file = name.strip_prefix(PACKS_PREFIX)?.rsplit('/').next()?;
        PackId::from_hex(file.strip_suffix(".pack")?)
    }

    /// `packs/<first two hex digits>/<32 hex digits>.pack`: the object name.
    pub fn name(&self) -> String {
        let hex = self.to_hex();
        format!("{PACKS_PREFIX}{}/{hex}.pack", &hex[..2])
    }
}

/// Where packs live in a backend.
pub(crate) const PACKS_PREFIX: &str = "packs/";

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: record at offset {offset}: {source}")]
    Record {
        path: PathBuf,
        offset: u64,
        source: RecordError,
    },
}

impl Classify for PackError {
    fn kind(&self) -> ErrorKind {
        match self {
            PackError::Io { source, .. } => io_kind(source),
            PackError::Record { .. } => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            PackError::Io { path, .. } => Context::path(path),
            PackError::Record { path, offset, .. } => Context::path(path).offset(*offset),
        }
    }
}

/// An empty sealed pack of id `id`: its header and an empty trailer (for
/// synthetic stores in benches and tests, whose entries must point into
/// packs that exist).
pub fn empty_pack(id: PackId) -> Vec<u8> {
    let mut bytes = encode_header(id, PACK_VERSION).to_vec();
    bytes.extend_from_slice(&encode_trailer(&[]));
    bytes
}

pub(crate) fn encode_header(id: PackId, version: u32) -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..32].copy_from_slice(&id.0);
    h
}

/// One record as a version 2 trailer lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub digest: Digest,
    pub offset: u64,
    pub record_len: u32,
    pub raw_len: u32,
}

pub(crate) fn encode_trailer(listed: &[Listed]) -> Vec<u8> {
    let mut t = Vec::with_capacity(listed.len() * TRAILER_ENTRY_LEN as usize + TRAILER_END_LEN as usize);
    for l in listed {
        t.extend_from_slice(&l.digest.0);
        t.extend_from_slice(&l.offset.to_le_bytes());
        t.extend_from_slice(&l.record_len.to_le_bytes());
        t.extend_from_slice(&l.raw_len.to_le_bytes());
    }
    t.extend_from_slice(&(listed.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c(&t);
    t.extend_from_slice(&crc.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&TRAILER_MAGIC);
    t
}

/// The number of entries the trailer end `end` (the last 24 bytes of a
/// pack of `size` bytes) announces, if it is one and they fit.
fn trailer_count(end: &[u8], size: u64) -> Option<u64> {
    if end.len() as u64 != TRAILER_END_LEN || end[16..24] != TRAILER_MAGIC || end[12..16] != [0; 4] {
        return None;
    }
    let count = u64::from_le_bytes(end[0..8].try_into().ok()?);
    let room = size.checked_sub(PACK_HEADER_LEN + TRAILER_END_LEN)?;
    (count <= room / TRAILER_ENTRY_LEN).then_some(count)
}

/// Decodes a whole trailer (entries and end) whose CRC checks out.
fn decode_trailer(trailer: &[u8]) -> Option<Vec<Listed>> {
    // Entries, then count (8), CRC32C (4), reserved (4), magic (8).
    let entries = trailer.len().checked_sub(TRAILER_END_LEN as usize)?;
    let crc = u32::from_le_bytes(trailer[entries + 8..entries + 12].try_into().ok()?);
    if crc32c::crc32c(&trailer[..entries + 8]) != crc {
        return None;
    }
    Some(
        trailer[..entries]
            .chunks_exact(TRAILER_ENTRY_LEN as usize)
            .map(|e| Listed {
                digest: Digest(e[0..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                record_len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
            })
            .collect(),
    )
}

/// The trailer of a version 2 pack of `size` bytes: where its records end
/// and what they are. None if the bytes do not end in an intact trailer.
fn trailer_of(bytes: &[u8]) -> Option<(u64, Vec<Listed>)> {
    let size = bytes.len() as u64;
    let end = bytes.get(size.checked_sub(TRAILER_END_LEN)? as usize..)?;
    let count = trailer_count(end, size)?;
    let start = size - TRAILER_END_LEN - count * TRAILER_ENTRY_LEN;
    Some((start, decode_trailer(&bytes[start as usize..])?))
}

/// Ranged reads of a pack held in memory, for [`read_listing`].
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn reader_of(bytes: &[u8]) -> impl FnMut(&mut [u8], u64) -> io::Result<()> + '_ {
    |buf, at| {
        let start = usize::try_from(at).unwrap_or(usize::MAX);
        let src = bytes
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What a version 2 pack holds, read from its end alone: two ranged reads
/// (the trailer's fixed end, then its entries) instead of one per record.
/// None for a version 1 pack or a damaged trailer: walk it instead.
pub fn read_listing(
    mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    size: u64,
) -> io::Result<Option<Vec<Listed>>> {
    let Some(end_at) = size.checked_sub(TRAILER_END_LEN) else {
        return Ok(None);
    };
    let mut end = [0u8; TRAILER_END_LEN as usize];
    read_at(&mut end, end_at)?;
    let Some(count) = trailer_count(&end, size) else {
        return Ok(None);
    };
    let entries = count * TRAILER_ENTRY_LEN;
    let mut trailer = vec![0u8; entries as usize];
    read_at(&mut trailer, end_at - entries)?;
    trailer.extend_from_slice(&end);
    Ok(decode_trailer(&trailer))
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

/// Walks a pack's records: what an index rebuild, a check and GC read
/// (through `store::packs::scan`); `id` is the pack id its name gives. Also
/// the fuzz target.
///
/// Records are self-describing, so a damaged one does not hide the rest:
/// after a header that does not decode, the walk resynchronises at the next
/// offset that holds a record whose header *and* payload CRC32C check out
/// (a chance match needs two 32-bit checksums to agree). Payloads of records
/// found in sequence are not checked here; callers check what they use.
///
/// The records of a version 2 pack end where its trailer starts; in a pack
/// whose records are intact, a trailer that does not list exactly the
/// records found is a damaged range. A pack whose trailer is damaged is
/// walked to its end, so the trailer's bytes are reported as damage too.
pub fn scan_bytes(bytes: &[u8], id: Option<PackId>) -> PackScan {
    let mut scan = PackScan::default();
    let header_len = PACK_HEADER_LEN.min(bytes.len() as u64);
    let head = &bytes[..header_len as usize];
    let version_ok = |v: &[u8]| v == 1u32.to_le_bytes() || v == 2u32.to_le_bytes();
    let header_ok = head.len() == PACK_HEADER_LEN as usize
        && head[0..8] == PACK_MAGIC
        && version_ok(&head[8..12])
        && id.is_none_or(|id| head[16..32] == id.0);
    if !header_ok {
        scan.damaged.push(DamagedRange {
            start: 0,
            end: header_len,
            reason: "damaged pack header".into(),
        });
    }
    let trailer = trailer_of(bytes).filter(|(start, _)| *start >= PACK_HEADER_LEN);
    let body = &bytes[..trailer.as_ref().map_or(bytes.len(), |(start, _)| *start as usize)];
    let size = body.len() as u64;
    let mut offset = PACK_HEADER_LEN;
    while offset < size {
        match record_at(body, offset) {
            Ok(h) => {
                scan.records.push((offset, h));
                offset += h.record_len();
            }
            Err(e) => {
                let next = resync(body, offset + 1);
                scan.damaged.push(DamagedRange {
                    start: offset,
                    end: next,
                    reason: e.to_string(),
                });
                offset = next;
            }
        }
    }
    // Damage in the records explains a trailer that lists more than the
    // walk found; without it, a disagreement is damage in its own right.
    let body_damaged = scan.damaged.iter().any(|d| d.start >= PACK_HEADER_LEN);
    if let Some((start, listed)) = trailer.filter(|_| !body_damaged) {
        let agrees = listed.len() == scan.records.len()
            && listed.iter().zip(&scan.records).all(|(l, (offset, h))| {
                l.offset == *offset
                    && l.digest == h.digest
                    && l.record_len as u64 == h.record_len()
                    && l.raw_len == h.raw_len
            });
        if !agrees {
            scan.damaged.push(DamagedRange {
                start,
                end: bytes.len() as u64,
                reason: "the trailer does not list the records found".into(),
            });
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
    while let Some(pos) = bytes.get(at..).and_then(|rest| {
        rest.windows(4)
            .position(|w| w == crate::format::chunk::RECORD_MAGIC)
    }) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::{ChunkEncoder, Compression};

    #[test]
    fn a_trailer_that_disagrees_with_the_records_is_damage() {
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let (mut bytes, offsets) = pack_of(&chunks);
        bytes[8] = 2; // claim version 2
        let listed: Vec<Listed> = chunks
            .iter()
            .zip(&offsets)
            .take(2) // one record missing
            .map(|(c, o)| Listed {
                digest: Digest::of(c),
                offset: *o,
                record_len: (HEADER_LEN + c.len()) as u32,
                raw_len: c.len() as u32,
            })
            .collect();
        let trailer_at = bytes.len() as u64;
        bytes.extend(encode_trailer(&listed));
        let scan = scan_bytes(&bytes, None);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.damaged.len(), 1);
        assert_eq!(scan.damaged[0].start, trailer_at);
        // A version 1 pack has no trailer and scans clean.
        let (v1, _) = pack_of(&chunks);
        assert!(scan_bytes(&v1, None).is_clean());
        assert_eq!(read_listing(reader_of(&v1), v1.len() as u64).unwrap(), None);
    }

    fn pack_of(chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>) {
        let id = PackId::random();
        let mut enc = ChunkEncoder::new(Compression::None).unwrap();
        let mut bytes = encode_header(id, 1).to_vec();
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
