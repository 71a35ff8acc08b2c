//! Chunk records: the self-describing unit stored in packs.
//!
//! A record is a 56-byte header followed by the stored payload (zstd frame or
//! raw bytes). The header carries the chunk's digest so that the index can be
//! rebuilt from packs alone, and two CRC32Cs so that damage is found before
//! the payload is decompressed or trusted. Layout: format-spec/chunk-record.md.

use std::str::FromStr;

use crate::chunking::chunker::MAX_CHUNK_SIZE;
use crate::chunking::digest::Digest;
use crate::error::{Classify, ErrorKind};

pub(crate) const RECORD_MAGIC: [u8; 4] = *b"HRDC";
pub(crate) const RECORD_VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 56;
pub(crate) const FLAG_ZSTD: u8 = 0x01;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad record magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("unknown record flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("record lengths out of range (raw {raw}, stored {stored})")]
    BadLength { raw: u32, stored: u32 },
    #[error("record payload checksum mismatch (bytes damaged on disk)")]
    PayloadChecksum,
    #[error("record payload does not decompress: {0}")]
    Decompress(String),
    #[error("record decompressed to {actual} bytes, header says {expected}")]
    LengthMismatch { expected: u32, actual: usize },
    #[error("chunk digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

impl Classify for RecordError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Damaged
    }
}

/// How new chunks are compressed. Zstd output is kept only when it is smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(1)
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::Zstd(1)),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!("invalid zstd level {level:?}: use 1..19")),
            },
            _ => Err(format!("invalid compression {s:?}: use none, zstd or zstd:LEVEL")),
        }
    }
}

/// Parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub compressed: bool,
    pub raw_len: u32,
    pub stored_len: u32,
    pub digest: Digest,
    pub payload_crc: u32,
}

impl RecordHeader {
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + self.stored_len as u64
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = RECORD_VERSION;
        h[5] = if self.compressed { FLAG_ZSTD } else { 0 };
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.digest.0);
        h[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..52]);
        h[52..56].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
        let h: &[u8; HEADER_LEN] =
            bytes
                .get(..HEADER_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(RecordError::Truncated {
                    need: HEADER_LEN,
                    have: bytes.len(),
                })?;
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != RECORD_MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        if h[4] != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(h[4]));
        }
        if crc32c::crc32c(&h[0..52]) != le_u32(&h[52..56]) {
            return Err(RecordError::HeaderChecksum);
        }
        if h[5] & !FLAG_ZSTD != 0 || h[6] != 0 || h[7] != 0 {
            return Err(RecordError::UnknownFlags(h[5]));
        }
        let raw = le_u32(&h[8..12]);
        let stored = le_u32(&h[12..16]);
        let compressed = h[5] & FLAG_ZSTD != 0;
        // Raw chunks store exactly their bytes; a compressed chunk is kept only when smaller.
        let lengths_ok =
            raw as u64 <= MAX_CHUNK_SIZE && if compressed { stored < raw } else { stored == raw };
        if !lengths_ok {
            return Err(RecordError::BadLength { raw, stored });
        }
        Ok(RecordHeader {
            compressed,
            raw_len: raw,
            stored_len: stored,
            digest: Digest(h[16..48].try_into().expect("32-byte slice")),
            payload_crc: le_u32(&h[48..52]),
        })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Turns chunks into records. Holds a reusable zstd context; one per worker thread.
pub struct ChunkEncoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkEncoder {
    pub fn new(compression: Compression) -> std::io::Result<ChunkEncoder> {
        let zstd = match compression {
            Compression::None => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
        };
        Ok(ChunkEncoder { zstd })
    }

    /// Encodes `data` (whose digest is `digest`) as a complete record.
    pub fn encode(&mut self, data: &[u8], digest: Digest) -> Vec<u8> {
        assert!(
            data.len() as u64 <= MAX_CHUNK_SIZE,
            "chunk larger than MAX_CHUNK_SIZE"
        );
        let mut record = Vec::new();
        let mut compressed = false;
        if let Some(z) = self.zstd.as_mut() {
            record.resize(HEADER_LEN + zstd::zstd_safe::compress_bound(data.len()), 0);
            if let Ok(n) = z.compress_to_buffer(data, &mut record[HEADER_LEN..]) {
                if n < data.len() {
                    record.truncate(HEADER_LEN + n);
                    compressed = true;
                }
            }
        }
        if !compressed {
            record.clear();
            record.resize(HEADER_LEN, 0);
            record.extend_from_slice(data);
        }
        let payload = &record[HEADER_LEN..];
        let header = RecordHeader {
            compressed,
            raw_len: data.len() as u32,
            stored_len: payload.len() as u32,
            digest,
            payload_crc: crc32c::crc32c(payload),
        };
        record[..HEADER_LEN].copy_from_slice(&header.encode());
        record
    }
}

/// Checks and unpacks records. Holds a reusable zstd context; one per worker thread.
pub struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl ChunkDecoder {
    pub fn new() -> std::io::Result<ChunkDecoder> {
        Ok(ChunkDecoder {
            zstd: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Verifies a whole record (header CRC, payload CRC, length, digest) and
    /// returns the chunk bytes. `expected` is the digest the caller asked for;
    /// the record's own digest must match it and the content must hash to it.
    pub fn decode(&mut self, record: &[u8], expected: &Digest) -> Result<Vec<u8>, RecordError> {
        let mut out = vec![0u8; RecordHeader::decode(record)?.raw_len as usize];
        self.decode_to_slice(record, expected, &mut out)?;
        Ok(out)
    }

    /// [`decode`](Self::decode) into the front of `out`, which must hold
    /// the chunk; returns its length. Lets restore decompress straight into
    /// one reused (aligned) buffer per thread.
    pub fn decode_to_slice(
        &mut self,
        record: &[u8],
        expected: &Digest,
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        let (header, payload) = checked_payload(record)?;
        let raw_len = header.raw_len as usize;
        if out.len() < raw_len {
            return Err(RecordError::LengthMismatch {
                expected: header.raw_len,
                actual: out.len(),
            });
        }
        let out = &mut out[..raw_len];
        if header.compressed {
            self.decompress(&header, payload, out)?;
        } else {
            out.copy_from_slice(payload);
        }
        check_digest(&header, payload, out, expected)?;
        Ok(raw_len)
    }

    /// Runs every check of [`decode`](Self::decode) without handing out the
    /// content: what verify needs. A raw payload is hashed where it lies;
    /// only a compressed one is decompressed, into `scratch`.
    pub fn check(
        &mut self,
        record: &[u8],
        expected: &Digest,
        scratch: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let (header, payload) = checked_payload(record)?;
        if !header.compressed {
            return check_digest(&header, payload, payload, expected);
        }
        scratch.resize(header.raw_len as usize, 0);
        self.decompress(&header, payload, scratch)?;
        check_digest(&header, payload, scratch, expected)
    }

    /// Decompresses a compressed payload into `out` (exactly `raw_len`
    /// bytes), after its CRC passed: zstd never sees damaged bytes.
    fn decompress(
        &mut self,
        header: &RecordHeader,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(), RecordError> {
        if crc32c::crc32c(payload) != header.payload_crc {
            return Err(RecordError::PayloadChecksum);
        }
        let n = self
            .zstd
            .decompress_to_buffer(payload, out)
            .map_err(|e| RecordError::Decompress(e.to_string()))?;
        if n != out.len() {
            return Err(RecordError::LengthMismatch {
                expected: header.raw_len,
                actual: n,
            });
        }
        Ok(())
    }
}

/// Checks the header and total length; returns the header and the payload.
fn checked_payload(record: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
    let header = RecordHeader::decode(record)?;
    let need = HEADER_LEN + header.stored_len as usize;
    if record.len() != need {
        return Err(RecordError::Truncated {
            need,
            have: record.len(),
        });
    }
    Ok((header, &record[HEADER_LEN..]))
}

/// The content must hash to the digest asked for and to the header's.
///
/// A raw payload's CRC is computed only when the digest fails, to say why:
/// BLAKE3 over the same bytes already proves them intact, and skipping the
/// CRC saves an eighth of verify's work on incompressible data.
fn check_digest(
    header: &RecordHeader,
    payload: &[u8],
    content: &[u8],
    expected: &Digest,
) -> Result<(), RecordError> {
    let actual = Digest::of(content);
    if actual == *expected && header.digest == *expected {
        return Ok(());
    }
    if !header.compressed && crc32c::crc32c(payload) != header.payload_crc {
        return Err(RecordError::PayloadChecksum);
    }
    Err(RecordError::DigestMismatch {
        expected: *expected,
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
    }

    #[test]
    fn round_trip_compressed_and_raw() {
        let mut dec = ChunkDecoder::new().unwrap();
        for compression in [Compression::None, Compression::Zstd(1), Compression::Zstd(9)] {
            let mut enc = ChunkEncoder::new(compression).unwrap();
            for data in [sample(65536), vec![7u8; 1], random(4096)] {
                let d = Digest::of(&data);
                let rec = enc.encode(&data, d);
                let h = RecordHeader::decode(&rec).unwrap();
                assert_eq!(h.record_len() as usize, rec.len());
                assert_eq!(dec.decode(&rec, &d).unwrap(), data);
            }
        }
    }

    fn random(len: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn compression_kept_only_when_smaller() {
        let mut enc = ChunkEncoder::new(Compression::Zstd(1)).unwrap();
        let noise = random(65536);
        let rec = enc.encode(&noise, Digest::of(&noise));
        assert!(!RecordHeader::decode(&rec).unwrap().compressed);
        let text = sample(65536);
        let rec = enc.encode(&text, Digest::of(&text));
        assert!(RecordHeader::decode(&rec).unwrap().compressed);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut dec = ChunkDecoder::new().unwrap();
        let mut scratch = Vec::new();
        for compression in [Compression::Zstd(1), Compression::None] {
            let data = sample(3000);
            let d = Digest::of(&data);
            let rec = ChunkEncoder::new(compression).unwrap().encode(&data, d);
            dec.check(&rec, &d, &mut scratch).unwrap();
            for i in 0..rec.len() {
                let mut bad = rec.clone();
                bad[i] ^= 0x10;
                assert!(
                    dec.decode(&bad, &d).is_err(),
                    "{compression:?}: flip at {i} not detected"
                );
                assert!(
                    dec.check(&bad, &d, &mut scratch).is_err(),
                    "{compression:?}: flip at {i} passed check"
                );
            }
            // A damaged payload is named as such, raw or compressed.
            let mut bad = rec.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(
                dec.check(&bad, &d, &mut scratch),
                Err(RecordError::PayloadChecksum)
            );
        }
        let mut enc = ChunkEncoder::new(Compression::Zstd(1)).unwrap();
        let data = sample(3000);
        let d = Digest::of(&data);
        let rec = enc.encode(&data, d);
        assert!(matches!(
            dec.decode(&rec[..rec.len() - 1], &d),
            Err(RecordError::Truncated { .. })
        ));
        assert!(matches!(
            dec.decode(&rec, &Digest::of(b"other")),
            Err(RecordError::DigestMismatch { .. })
        ));
    }

    /// Golden bytes: a change to the header layout must come with a version bump.
    #[test]
    fn header_golden_bytes() {
        let h = RecordHeader {
            compressed: true,
            raw_len: 0x0102_0304,
            stored_len: 0x0a0b,
            digest: Digest([0xaa; 32]),
            payload_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"HRDC\x01\x01\x00\x00");
        assert_eq!(&b[8..16], &[4, 3, 2, 1, 0x0b, 0x0a, 0, 0]);
        assert_eq!(&b[48..52], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(
            u32::from_le_bytes(b[52..56].try_into().unwrap()),
            crc32c::crc32c(&b[..52])
        );
    }

    #[test]
    fn compression_parses() {
        assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd(1)));
        assert_eq!("zstd:7".parse::<Compression>(), Ok(Compression::Zstd(7)));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("lz4".parse::<Compression>().is_err());
    }
}
