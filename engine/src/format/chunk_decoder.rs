//! Reading chunk records back: every check of format-spec/chunk-record.md
//! (and encryption.md for sealed payloads) before a byte is handed out.

use std::sync::Arc;

use super::chunk::{RecordError, RecordHeader, AAD_LEN, HEADER_LEN};
use crate::chunking::digest::{ChunkHasher, Digest};
use crate::crypto::{Protection, StoreKeys};

/// What a decoder can prove about a record.
#[derive(Clone)]
enum Checks {
    /// A plain store: plain digests, nothing sealed.
    Plain,
    /// An unlocked store: keyed digests, sealed payloads opened.
    Keyed(Arc<StoreKeys>),
    /// A protected store without its key: CRCs only, no content handed out.
    /// `sealed`: whether the store's records are sealed (encrypt mode).
    CrcOnly { sealed: bool },
}

/// Checks and unpacks records. Holds a reusable zstd context; one per worker thread.
pub struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    checks: Checks,
    /// A sealed, compressed payload after opening, before decompression.
    opened: Vec<u8>,
}

impl Drop for ChunkDecoder {
    /// The last opened payload is plaintext of an encrypted store: wiped,
    /// not left to the allocator.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.opened);
    }
}

impl ChunkDecoder {
    /// A decoder for a plain store.
    pub fn new() -> std::io::Result<ChunkDecoder> {
        Ok(ChunkDecoder {
            zstd: zstd::bulk::Decompressor::new()?,
            checks: Checks::Plain,
            opened: Vec::new(),
        })
    }

    /// A decoder for a store of `protection`: with its keys when unlocked,
    /// CRC checks only when locked.
    pub fn for_store(protection: Protection, keys: Option<&Arc<StoreKeys>>) -> std::io::Result<ChunkDecoder> {
        let mut d = ChunkDecoder::new()?;
        d.checks = match (protection, keys) {
            (_, Some(k)) => Checks::Keyed(k.clone()),
            (Protection::None, None) => Checks::Plain,
            (p, None) => Checks::CrcOnly {
                sealed: p == Protection::Encrypt,
            },
        };
        Ok(d)
    }

    fn hasher(&self) -> Result<ChunkHasher, RecordError> {
        match &self.checks {
            Checks::Plain => Ok(ChunkHasher::PLAIN),
            Checks::Keyed(k) => Ok(k.hasher()),
            Checks::CrcOnly { .. } => Err(RecordError::NeedsKey),
        }
    }

    /// Every record of an encrypt store is sealed and no record of another
    /// store is: a plaintext record in an encrypt store was written by
    /// someone who switched its encryption off, and is refused like a
    /// damaged one (format-spec/encryption.md, "The mode is bound").
    fn check_sealing(&self, header: &RecordHeader) -> Result<(), RecordError> {
        let store_seals = match &self.checks {
            Checks::Plain => false,
            Checks::Keyed(k) => k.encrypts(),
            Checks::CrcOnly { sealed } => *sealed,
        };
        if header.sealed != store_seals {
            return Err(RecordError::WrongSealing {
                sealed: header.sealed,
            });
        }
        Ok(())
    }

    /// The header and payload of a record whose lengths and sealing fit.
    fn checked_payload<'r>(&self, record: &'r [u8]) -> Result<(RecordHeader, &'r [u8]), RecordError> {
        let (header, payload) = checked_payload(record)?;
        self.check_sealing(&header)?;
        Ok((header, payload))
    }

    /// Verifies a whole record (header CRC, payload CRC, tag, length,
    /// digest) and returns the chunk bytes. `expected` is the digest the
    /// caller asked for; the record's own digest must match it and the
    /// content must hash to it.
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
        let hasher = self.hasher()?;
        let (header, payload) = self.checked_payload(record)?;
        let raw_len = header.raw_len as usize;
        if out.len() < raw_len {
            return Err(RecordError::LengthMismatch {
                expected: header.raw_len,
                actual: out.len(),
            });
        }
        let out = &mut out[..raw_len];
        self.unpack(&header, record, out)?;
        check_digest(hasher, &header, payload, out, expected)?;
        Ok(raw_len)
    }

    /// Runs every check of [`decode`](Self::decode) without handing out the
    /// content: what verify needs. A raw payload is hashed where it lies;
    /// only a compressed or sealed one is unpacked, into `scratch`. Without
    /// the key of a protected store, only the CRCs are checked: the
    /// keyless verify that finds bit rot.
    pub fn check(
        &mut self,
        record: &[u8],
        expected: &Digest,
        scratch: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let (header, payload) = self.checked_payload(record)?;
        let hasher = match self.hasher() {
            Ok(h) => h,
            Err(_) => {
                return match crc32c::crc32c(payload) == header.payload_crc {
                    true if header.digest == *expected => Ok(()),
                    true => Err(RecordError::DigestMismatch {
                        expected: *expected,
                        actual: header.digest,
                    }),
                    false => Err(RecordError::PayloadChecksum),
                }
            }
        };
        if !header.compressed && !header.sealed {
            return check_digest(hasher, &header, payload, payload, expected);
        }
        scratch.resize(header.raw_len as usize, 0);
        self.unpack(&header, record, scratch)?;
        check_digest(hasher, &header, payload, scratch, expected)
    }

    /// Puts the content of a checked-length record into `out` (exactly
    /// `raw_len` bytes): the payload's CRC is checked first whenever it is
    /// to be decrypted or decompressed, so neither AES nor zstd sees
    /// damaged bytes and bit rot is named as such.
    fn unpack(&mut self, header: &RecordHeader, record: &[u8], out: &mut [u8]) -> Result<(), RecordError> {
        let payload = &record[HEADER_LEN..];
        if !header.compressed && !header.sealed {
            out.copy_from_slice(payload);
            return Ok(());
        }
        if crc32c::crc32c(payload) != header.payload_crc {
            return Err(RecordError::PayloadChecksum);
        }
        if !header.sealed {
            return decompress(&mut self.zstd, header, payload, out);
        }
        let Checks::Keyed(keys) = &self.checks else {
            return Err(RecordError::NeedsKey);
        };
        let aad = &record[..AAD_LEN];
        if !header.compressed {
            return keys
                .open_record(&header.digest, aad, payload, out)
                .map_err(|_| RecordError::Authentication);
        }
        self.opened.resize(header.content_len(), 0);
        keys.open_record(&header.digest, aad, payload, &mut self.opened)
            .map_err(|_| RecordError::Authentication)?;
        decompress(&mut self.zstd, header, &self.opened, out)
    }
}

/// Decompresses a zstd frame into `out` (exactly `raw_len` bytes).
fn decompress(
    zstd: &mut zstd::bulk::Decompressor<'static>,
    header: &RecordHeader,
    frame: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    let n = zstd
        .decompress_to_buffer(frame, out)
        .map_err(|e| RecordError::Decompress(e.to_string()))?;
    if n != out.len() {
        return Err(RecordError::LengthMismatch {
            expected: header.raw_len,
            actual: n,
        });
    }
    Ok(())
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
    hasher: ChunkHasher,
    header: &RecordHeader,
    payload: &[u8],
    content: &[u8],
    expected: &Digest,
) -> Result<(), RecordError> {
    let actual = hasher.digest(content);
    if actual == *expected && header.digest == *expected {
        return Ok(());
    }
    if !header.compressed && !header.sealed && crc32c::crc32c(payload) != header.payload_crc {
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
    use crate::format::chunk::tests::{random, sample};
    use crate::format::chunk::{ChunkEncoder, Compression};

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

    fn keys() -> Arc<StoreKeys> {
        let master = crate::crypto::master_key::MasterKey::generate().unwrap();
        Arc::new(StoreKeys::derive(&master, crate::crypto::Protection::Encrypt))
    }

    #[test]
    fn sealed_records_round_trip_and_hide_their_content() {
        let k = keys();
        let mut dec = ChunkDecoder::for_store(Protection::Encrypt, Some(&k)).unwrap();
        let mut scratch = Vec::new();
        for compression in [Compression::None, Compression::Zstd(1)] {
            let mut enc = ChunkEncoder::new(compression).unwrap().with_keys(Some(&k));
            for data in [sample(65536), random(4096), b"MARKER MARKER MARKER".repeat(50)] {
                let d = k.hasher().digest(&data);
                let rec = enc.encode(&data, d);
                let h = RecordHeader::decode(&rec).unwrap();
                assert!(h.sealed);
                assert_eq!(h.record_len() as usize, rec.len());
                assert!(!rec.windows(6).any(|w| w == b"MARKER"));
                assert_eq!(dec.decode(&rec, &d).unwrap(), data);
                dec.check(&rec, &d, &mut scratch).unwrap();
                // The same chunk twice: another nonce, another ciphertext.
                assert_ne!(enc.encode(&data, d)[HEADER_LEN..], rec[HEADER_LEN..]);
            }
        }
    }

    #[test]
    fn sealed_records_fail_without_the_key_and_with_another() {
        let k = keys();
        let data = sample(3000);
        let d = k.hasher().digest(&data);
        let rec = ChunkEncoder::new(Compression::Zstd(1))
            .unwrap()
            .with_keys(Some(&k))
            .encode(&data, d);
        let mut scratch = Vec::new();
        // Keyless: no content, but the CRC check (keyless verify) works.
        let mut locked = ChunkDecoder::for_store(Protection::Encrypt, None).unwrap();
        assert_eq!(locked.decode(&rec, &d), Err(RecordError::NeedsKey));
        locked.check(&rec, &d, &mut scratch).unwrap();
        let mut rotten = rec.clone();
        *rotten.last_mut().unwrap() ^= 4;
        assert_eq!(
            locked.check(&rotten, &d, &mut scratch),
            Err(RecordError::PayloadChecksum)
        );
        // A plain store's decoder never hands out a sealed record either.
        assert_eq!(
            ChunkDecoder::new().unwrap().decode(&rec, &d),
            Err(RecordError::WrongSealing { sealed: true })
        );
        let mut other = ChunkDecoder::for_store(Protection::Encrypt, Some(&keys())).unwrap();
        assert_eq!(other.decode(&rec, &d), Err(RecordError::Authentication));
    }

    /// An encrypt store's records are all sealed and no other store's are:
    /// a plaintext record planted in an encrypt store (or written while its
    /// config said otherwise) is refused with the key and without it.
    #[test]
    fn sealing_must_match_the_store_mode() {
        let master = crate::crypto::master_key::MasterKey::generate().unwrap();
        let enc = Arc::new(StoreKeys::derive(&master, Protection::Encrypt));
        let sign = Arc::new(StoreKeys::derive(&master, Protection::Sign));
        let data = sample(3000);
        let mut scratch = Vec::new();
        let unsealed_d = enc.hasher().digest(&data);
        let unsealed = ChunkEncoder::new(Compression::Zstd(1))
            .unwrap()
            .encode(&data, unsealed_d);
        let not_sealed = Err(RecordError::WrongSealing { sealed: false });
        for mut dec in [
            ChunkDecoder::for_store(Protection::Encrypt, Some(&enc)).unwrap(),
            ChunkDecoder::for_store(Protection::Encrypt, None).unwrap(),
        ] {
            assert_eq!(dec.check(&unsealed, &unsealed_d, &mut scratch), not_sealed);
        }
        let sealed = ChunkEncoder::new(Compression::Zstd(1))
            .unwrap()
            .with_keys(Some(&enc))
            .encode(&data, unsealed_d);
        let is_sealed = Err(RecordError::WrongSealing { sealed: true });
        for mut dec in [
            ChunkDecoder::for_store(Protection::Sign, Some(&sign)).unwrap(),
            ChunkDecoder::for_store(Protection::Sign, None).unwrap(),
        ] {
            assert_eq!(dec.check(&sealed, &unsealed_d, &mut scratch), is_sealed);
        }
        // Mode-bound keys: one secret, two modes, two digests.
        assert_ne!(enc.hasher().digest(&data), sign.hasher().digest(&data));
    }

    #[test]
    fn every_change_to_a_sealed_record_is_found() {
        let k = keys();
        let mut dec = ChunkDecoder::for_store(Protection::Encrypt, Some(&k)).unwrap();
        let mut scratch = Vec::new();
        for compression in [Compression::Zstd(1), Compression::None] {
            let data = sample(2000);
            let d = k.hasher().digest(&data);
            let rec = ChunkEncoder::new(compression)
                .unwrap()
                .with_keys(Some(&k))
                .encode(&data, d);
            for i in 0..rec.len() {
                let mut bad = rec.clone();
                bad[i] ^= 0x10;
                assert!(dec.decode(&bad, &d).is_err(), "{compression:?}: flip at {i}");
                assert!(
                    dec.check(&bad, &d, &mut scratch).is_err(),
                    "{compression:?}: flip at {i}"
                );
            }
            // Someone without the key who fixes both CRCs after changing
            // the payload, or who moves the record to another digest, is
            // caught by the tag.
            let mut forged = rec.clone();
            forged[HEADER_LEN + 20] ^= 1;
            let crc = crc32c::crc32c(&forged[HEADER_LEN..]);
            let mut h = RecordHeader::decode(&forged).unwrap();
            h.payload_crc = crc;
            forged[..HEADER_LEN].copy_from_slice(&h.encode());
            assert_eq!(dec.decode(&forged, &d), Err(RecordError::Authentication));
            let other = k.hasher().digest(b"other");
            let mut moved = rec.clone();
            let mut h = RecordHeader::decode(&moved).unwrap();
            h.digest = other;
            moved[..HEADER_LEN].copy_from_slice(&h.encode());
            assert_eq!(dec.decode(&moved, &other), Err(RecordError::Authentication));
        }
    }
}
