//! Chunk records: the self-describing unit stored in packs, and writing
//! them (reading them back is `chunk_decoder`).
//!
//! A record is a 56-byte header followed by the stored payload (zstd frame or
//! raw bytes, sealed with AES-256-GCM in an encrypted store). The header
//! carries the chunk's digest so that the index can be rebuilt from packs
//! alone, and two CRC32Cs so that damage is found before the payload is
//! decrypted, decompressed or trusted — with or without the key. Layout:
//! format-spec/chunk-record.md.

use std::str::FromStr;
use std::sync::Arc;

use crate::chunking::chunker::MAX_CHUNK_SIZE;
use crate::chunking::digest::Digest;
use crate::crypto::keys::{NONCE_LEN, SEAL_OVERHEAD};
use crate::crypto::StoreKeys;
use crate::error::{Classify, ErrorKind};

pub(crate) const RECORD_MAGIC: [u8; 4] = *b"HRDC";
pub(crate) const RECORD_VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 56;
pub(crate) const FLAG_ZSTD: u8 = 0x01;
pub(crate) const FLAG_SEALED: u8 = 0x02;
/// The header bytes an encrypted payload's tag authenticates: everything
/// up to and including the digest.
pub(crate) const AAD_LEN: usize = 48;

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
    #[error("record fails authentication: written with another key, or changed by someone without it")]
    Authentication,
    #[error("record needs the store key to be read (this store is encrypted or signed)")]
    NeedsKey,
    #[error("{}", if *sealed { "record is sealed, but this store does not encrypt" } else { "record is not sealed, but this store encrypts: written by someone who switched its encryption off" })]
    WrongSealing { sealed: bool },
}

impl Classify for RecordError {
    fn kind(&self) -> ErrorKind {
        match self {
            RecordError::Authentication => ErrorKind::Auth,
            RecordError::NeedsKey | RecordError::WrongSealing { .. } => ErrorKind::Auth,
            _ => ErrorKind::Damaged,
        }
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

/// As [`FromStr`] reads it: `none` or `zstd:LEVEL`.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
        }
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
    /// The payload is nonce, AES-256-GCM ciphertext of the (compressed or
    /// raw) content, tag.
    pub sealed: bool,
    pub raw_len: u32,
    pub stored_len: u32,
    pub digest: Digest,
    pub payload_crc: u32,
}

impl RecordHeader {
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + self.stored_len as u64
    }

    /// Length of the (compressed or raw) content inside the payload.
    pub(crate) fn content_len(&self) -> usize {
        let overhead = if self.sealed { SEAL_OVERHEAD } else { 0 };
        self.stored_len as usize - overhead
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = RECORD_VERSION;
        h[5] = if self.compressed { FLAG_ZSTD } else { 0 } | if self.sealed { FLAG_SEALED } else { 0 };
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
        if h[5] & !(FLAG_ZSTD | FLAG_SEALED) != 0 || h[6] != 0 || h[7] != 0 {
            return Err(RecordError::UnknownFlags(h[5]));
        }
        let raw = le_u32(&h[8..12]);
        let stored = le_u32(&h[12..16]);
        let compressed = h[5] & FLAG_ZSTD != 0;
        let sealed = h[5] & FLAG_SEALED != 0;
        // Raw chunks store exactly their bytes; a compressed chunk is kept
        // only when smaller; sealing adds nonce and tag to either.
        let content = if sealed {
            stored.checked_sub(SEAL_OVERHEAD as u32)
        } else {
            Some(stored)
        };
        let lengths_ok = raw as u64 <= MAX_CHUNK_SIZE
            && content.is_some_and(|c| if compressed { c < raw } else { c == raw });
        if !lengths_ok {
            return Err(RecordError::BadLength { raw, stored });
        }
        Ok(RecordHeader {
            compressed,
            sealed,
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
    /// Set in an encrypted store: payloads are sealed with its chunk key.
    seal: Option<Arc<StoreKeys>>,
}

impl ChunkEncoder {
    pub fn new(compression: Compression) -> std::io::Result<ChunkEncoder> {
        let zstd = match compression {
            Compression::None => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
        };
        Ok(ChunkEncoder { zstd, seal: None })
    }

    /// Seals every payload with `keys`' chunk key, if they encrypt.
    pub fn with_keys(mut self, keys: Option<&Arc<StoreKeys>>) -> ChunkEncoder {
        self.seal = keys.filter(|k| k.encrypts()).cloned();
        self
    }

    /// Encodes `data` (whose digest is `digest`) as a complete record.
    pub fn encode(&mut self, data: &[u8], digest: Digest) -> Vec<u8> {
        assert!(
            data.len() as u64 <= MAX_CHUNK_SIZE,
            "chunk larger than MAX_CHUNK_SIZE"
        );
        // The content starts after the nonce when sealed.
        let start = HEADER_LEN + if self.seal.is_some() { NONCE_LEN } else { 0 };
        let mut record = Vec::new();
        let mut compressed = false;
        if let Some(z) = self.zstd.as_mut() {
            record.resize(start + zstd::zstd_safe::compress_bound(data.len()), 0);
            if let Ok(n) = z.compress_to_buffer(data, &mut record[start..]) {
                if n < data.len() {
                    record.truncate(start + n);
                    compressed = true;
                }
            }
        }
        if !compressed {
            record.clear();
            record.resize(start, 0);
            record.extend_from_slice(data);
        }
        let mut header = RecordHeader {
            compressed,
            sealed: self.seal.is_some(),
            raw_len: data.len() as u32,
            stored_len: (record.len() - HEADER_LEN) as u32,
            digest,
            payload_crc: 0,
        };
        if let Some(keys) = &self.seal {
            header.stored_len += crate::crypto::keys::TAG_LEN as u32;
            let aad = header.encode();
            keys.seal_record(&digest, &aad[..AAD_LEN], &mut record, HEADER_LEN)
                .expect("sealing with a valid key and system randomness");
        }
        header.payload_crc = crc32c::crc32c(&record[HEADER_LEN..]);
        record[..HEADER_LEN].copy_from_slice(&header.encode());
        record
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
    }

    pub(crate) fn random(len: usize) -> Vec<u8> {
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

    /// Golden bytes: a change to the header layout must come with a version bump.
    #[test]
    fn header_golden_bytes() {
        let h = RecordHeader {
            compressed: true,
            sealed: false,
            raw_len: 0x0102_0304,
            stored_len: 0x0a0b,
            digest: Digest([0xaa; 32]),
            payload_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"HRDC\x01\x01\x00\x00");
        let sealed = RecordHeader { sealed: true, ..h }.encode();
        assert_eq!(&sealed[0..8], b"HRDC\x01\x03\x00\x00");
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
