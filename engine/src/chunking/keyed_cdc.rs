//! The keyed content-defined chunker of protected stores (format-spec/
//! tree-archive.md, "Keyed chunking"): where a stream is cut depends on the
//! store's key, so that chunk lengths (visible in index files and packs
//! without the key) do not tell whoever holds the store whether, or where,
//! a file they know was backed up.
//!
//! The construction is the "UHF-then-PRF" of Truong et al., "Breaking and
//! Fixing Content-Defined Chunking" (eprint 2025/558), as borg's `*-aes`
//! chunkers build it: a Gear rolling hash over the last 64 bytes, with a
//! gear table derived from the key, compresses the window into 64 bits; the
//! cut decision looks only at AES-128 (under a second key) of its top 32
//! bits, four positions to one AES block (a quarter of the AES work; each
//! decision then also depends on up to 3 following bytes, still local).
//! Observed cuts are then pseudo-random functions of the window and give no
//! equations about the table, unlike a keyed gear table alone, whose cut
//! bits are linear in it. Sizes follow FastCDC 2020: nothing is cut before
//! `min`, normalized chunking (a stricter mask before `avg`, a looser one
//! after), a forced cut at `max`.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;

/// Positions whose window hashes are encrypted in one batch (four to an
/// AES block): enough for the AES units to pipeline, few enough that a
/// cut wastes little. A multiple of 4, so no group straddles two batches.
const BATCH: usize = 64;
/// The Gear hash forgets a byte after 64 shifts: the window.
const WINDOW: usize = 64;

/// The secrets of one store's chunker.
pub struct ChunkerKey {
    gear: Box<[u64; 256]>,
    prf: Aes128,
}

impl std::fmt::Debug for ChunkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkerKey(..)")
    }
}

impl ChunkerKey {
    /// The chunker of a store whose chunker key (derived from its secret,
    /// crypto::keys) is `key`: 256 gear entries from BLAKE3's keyed XOF,
    /// the AES-128 key from a key derivation of its own.
    pub fn new(key: &[u8; 32]) -> ChunkerKey {
        let mut table = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(key)
            .update(b"hoard keyed chunker gear table")
            .finalize_xof()
            .fill(&mut table);
        let mut gear = Box::new([0u64; 256]);
        for (g, bytes) in gear.iter_mut().zip(table.chunks_exact(8)) {
            *g = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        }
        let aes_key =
            zeroize::Zeroizing::new(blake3::derive_key("hoard 2026-12 keyed chunker aes-128 key", key));
        let prf = Aes128::new(GenericArray::from_slice(&aes_key[..16]));
        table.iter_mut().for_each(|b| *b = 0);
        ChunkerKey { gear, prf }
    }

    /// The length of the first chunk of `src`: every byte of `src` up to
    /// it must be there (the caller holds at least `max` bytes unless the
    /// stream ends).
    pub fn cut(&self, src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        if src.len() <= min {
            return src.len();
        }
        let end = src.len().min(max);
        let center = avg.min(end);
        let bits = avg.trailing_zeros();
        let strict = (1u64 << (bits + 1)) - 1;
        let loose = (1u64 << (bits - 1)) - 1;
        // Warm the hash up on the window before `min`, so every position
        // that may be cut hashes a full window of its own bytes.
        let mut h = 0u64;
        for &b in &src[min.saturating_sub(WINDOW)..min] {
            h = (h << 1).wrapping_add(self.gear[b as usize]);
        }
        // Positions go in fours (min + 4i ..= min + 4i + 3): one AES block
        // holds the top 32 bits of each one's window hash (bits that depend
        // on all 64 bytes of the window), and 32 bits of its output decide
        // each. The last positions of a buffer may lack partners (0 then):
        // whether they cut or not, the chunk ends within them.
        let mut blocks = [GenericArray::default(); BATCH / 4];
        let gear = &*self.gear;
        let mut at = min;
        while at < end {
            let n = BATCH.min(end - at);
            let groups = n.div_ceil(4);
            let window = &src[at..at + n];
            for (g, block) in blocks[..groups].iter_mut().enumerate() {
                let mut packed = 0u128;
                for k in 0..4 {
                    if let Some(&b) = window.get(4 * g + k) {
                        h = (h << 1).wrapping_add(gear[b as usize]);
                        packed |= u128::from(h >> 32) << (32 * k);
                    }
                }
                *block = packed.to_le_bytes().into();
            }
            self.prf.encrypt_blocks(&mut blocks[..groups]);
            for (g, block) in blocks[..groups].iter().enumerate() {
                let out = u128::from_le_bytes((*block).into());
                let first = at + 4 * g;
                let mask = if first + 3 < center { strict } else { loose };
                for k in 0..4.min(end - first) {
                    let mask = if first + k < center { strict } else { mask };
                    if (out >> (32 * k)) as u64 & mask == 0 {
                        return first + k + 1;
                    }
                }
            }
            at += n;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cuts(key: &ChunkerKey, src: &[u8], min: usize, avg: usize, max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < src.len() {
            at += key.cut(&src[at..], min, avg, max);
            out.push(at);
        }
        out
    }

    /// The obviously correct reference: one position at a time, its window
    /// hashed from scratch, no batch.
    fn reference_cut(key: &ChunkerKey, src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        if src.len() <= min {
            return src.len();
        }
        let end = src.len().min(max);
        let bits = avg.trailing_zeros();
        let window_hash = |i: usize| {
            let mut h = 0u64;
            for &b in &src[i + 1 - WINDOW.min(i + 1)..=i] {
                h = (h << 1).wrapping_add(key.gear[b as usize]);
            }
            h
        };
        for i in min..end {
            let first = min + (i - min) / 4 * 4;
            let mut packed = 0u128;
            for k in 0..4 {
                let word = if first + k < end {
                    window_hash(first + k) >> 32
                } else {
                    0
                };
                packed |= u128::from(word) << (32 * k);
            }
            let mut block = GenericArray::from(packed.to_le_bytes());
            key.prf.encrypt_block(&mut block);
            let out = u128::from_le_bytes(block.into());
            let v = (out >> (32 * (i - first))) as u64 & 0xffff_ffff;
            let mask_bits = if i < avg.min(end) { bits + 1 } else { bits - 1 };
            if v & ((1u64 << mask_bits) - 1) == 0 {
                return i + 1;
            }
        }
        end
    }

    #[test]
    fn matches_the_reference_and_respects_min_and_max() {
        let key = ChunkerKey::new(&[7; 32]);
        let src = data(1 << 20, 3);
        let (min, avg, max) = (4096 / 4, 4096, 4096 * 4);
        let mut at = 0;
        while at < src.len() {
            let n = key.cut(&src[at..], min, avg, max);
            assert_eq!(n, reference_cut(&key, &src[at..], min, avg, max), "at {at}");
            assert!(n <= max && (n > min || at + n == src.len()));
            at += n;
        }
    }

    /// Golden vector: a change here re-cuts every protected store's trees,
    /// so new backups would share nothing with old ones.
    #[test]
    fn golden_cut_points() {
        let key = ChunkerKey::new(&[0x42; 32]);
        let src = data(64 << 10, 11);
        let got = cuts(&key, &src, 1024, 4096, 16384);
        assert_eq!(
            got,
            [
                6544, 8824, 10059, 16403, 18117, 25028, 28007, 33401, 38367, 43686, 48428, 53181, 55799,
                61396, 65536
            ]
        );
    }

    #[test]
    fn cuts_depend_on_the_key_and_resynchronise_after_an_edit() {
        let (a, b) = (ChunkerKey::new(&[1; 32]), ChunkerKey::new(&[2; 32]));
        let src = data(1 << 20, 5);
        let (min, avg, max) = (1024, 4096, 16384);
        let ca = cuts(&a, &src, min, avg, max);
        let cb = cuts(&b, &src, min, avg, max);
        let common = ca.iter().filter(|c| cb.contains(c)).count();
        assert!(
            common * 10 < ca.len(),
            "{common} of {} cuts shared across keys",
            ca.len()
        );
        let mean = src.len() / ca.len();
        assert!((2048..8192).contains(&mean), "mean chunk {mean}");
        // An insertion near the start moves only the cuts near it.
        let mut edited = src[..100].to_vec();
        edited.extend_from_slice(b"inserted bytes");
        edited.extend_from_slice(&src[100..]);
        let ce: Vec<usize> = cuts(&a, &edited, min, avg, max).iter().map(|c| c - 14).collect();
        let same = ca.iter().filter(|c| ce.contains(c)).count();
        assert!(
            same + 3 >= ca.len(),
            "{same} of {} cuts survived the edit",
            ca.len()
        );
    }
}
