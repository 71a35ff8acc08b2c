//! The keyed content-defined chunker of protected stores (format-spec/
//! tree-archive.md, "Keyed chunking"): where a stream is cut depends on the
//! store's key, so that chunk lengths (visible in index files and packs
//! without the key) do not tell whoever holds the store whether, or where,
//! a file they know was backed up.
//!
//! The construction is the "UHF-then-PRF" of Truong et al., "Breaking and
//! Fixing Content-Defined Chunking" (eprint 2025/558), with the PRF asked
//! once per *segment* instead of once per byte. A Gear rolling hash over
//! the last 64 bytes, with a gear table derived from the key, marks secret
//! anchors; the anchors split the chunk into segments of about `avg / 32`
//! bytes; AES-128 (under a second key) of the hash at a segment's start
//! decides whether the segment holds the cut, and where in it. Each byte
//! past `min` ends the chunk with the chance normalized chunking gives it
//! (FastCDC 2020: a stricter rate before `avg`, a looser one after, a
//! forced cut at `max`), whatever the anchors are, so an observed cut is a
//! pseudo-random function of its segment's window and says nothing about
//! the table, unlike a keyed gear table alone, whose cut bits are linear in
//! it.
//!
//! The price of the AES call is spread over a segment, and the bytes
//! between a segment's start and the earliest place its end may fall are
//! never hashed, so the chunker costs about what FastCDC does.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;

/// The Gear hash forgets a byte after 64 shifts: the window.
const WINDOW: usize = 64;

/// Where segments end, for an average chunk of `avg` (a power of two from
/// 4 KiB): at the first anchor (`hash & anchor == 0`, one position in
/// `avg / 64`) at least `spacing` bytes past the segment's start, or after
/// `span` bytes, whichever comes first.
#[derive(Clone, Copy)]
struct Segments {
    anchor: u64,
    spacing: usize,
    span: usize,
}

impl Segments {
    fn new(avg: usize) -> Segments {
        let a = avg / 64;
        Segments {
            anchor: a as u64 - 1,
            spacing: a,
            span: avg / 16,
        }
    }
}

/// The secrets of one store's chunker. Both are wiped when it is dropped
/// (the `aes` crate's `zeroize` feature for the round keys).
pub struct ChunkerKey {
    gear: Box<[u64; 256]>,
    prf: Aes128,
}

impl Drop for ChunkerKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.gear[..]);
    }
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
        let mut table = zeroize::Zeroizing::new([0u8; 256 * 8]);
        blake3::Hasher::new_keyed(key)
            .update(b"hoard keyed chunker gear table")
            .finalize_xof()
            .fill(&mut table[..]);
        let mut gear = Box::new([0u64; 256]);
        for (g, bytes) in gear.iter_mut().zip(table.chunks_exact(8)) {
            *g = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        }
        let aes_key =
            zeroize::Zeroizing::new(blake3::derive_key("hoard 2026-12 keyed chunker aes-128 key", key));
        let prf = Aes128::new(GenericArray::from_slice(&aes_key[..16]));
        ChunkerKey { gear, prf }
    }

    /// The length of the first chunk of `src`: every byte of `src` up to
    /// it must be there (the caller holds at least `max` bytes unless the
    /// stream ends). `min` is at least 1024 and `avg` a power of two from
    /// 4 KiB, so every window lies inside the chunk.
    pub fn cut(&self, src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        if src.len() <= min {
            return src.len();
        }
        let end = src.len().min(max);
        let center = avg.min(end);
        let bits = avg.trailing_zeros();
        let seg = Segments::new(avg);
        // Segment `[at, next)`: `at` is the position of its first byte and
        // `h` the hash of the window ending there. The first starts at `min`.
        let (mut at, mut h) = (min, self.window(src, min));
        while at < end {
            let (next, next_h) = self.segment_end(src, at, end, seg);
            if let Some(i) = self.decide(h, at, next - at, center, bits) {
                return i + 1;
            }
            (at, h) = (next, next_h);
        }
        end
    }

    /// Where the segment that starts at `at` ends, and the hash of the
    /// window ending there (the next segment's; 0 at `end`): at the first
    /// anchor from `at + spacing` on, else `span` bytes on, but by `end`.
    /// The bytes before the first window that may hold an anchor are
    /// skipped unhashed.
    fn segment_end(&self, src: &[u8], at: usize, end: usize, seg: Segments) -> (usize, u64) {
        let limit = (at + seg.span).min(end);
        let first = at + seg.spacing;
        if first < limit {
            let mut h = self.window(src, first);
            if h & seg.anchor == 0 {
                return (first, h);
            }
            for (p, b) in (first + 1..limit).zip(&src[first + 1..limit]) {
                h = (h << 1).wrapping_add(self.gear[*b as usize]);
                if h & seg.anchor == 0 {
                    return (p, h);
                }
            }
        }
        (limit, if limit < end { self.window(src, limit) } else { 0 })
    }

    /// The Gear hash of the window ending at position `i` (the 64 bytes
    /// up to and including it).
    fn window(&self, src: &[u8], i: usize) -> u64 {
        src[i + 1 - WINDOW..=i]
            .iter()
            .fold(0, |h, b| (h << 1).wrapping_add(self.gear[*b as usize]))
    }

    /// The decision of the segment of `len` bytes that starts at position
    /// `at` and whose window hash is `h`: AES-128 of `h` (u64 LE, 8 zero
    /// bytes) gives `v`, its first 8 bytes, and `r`, its last 8 (u64 LE).
    /// The candidate is position `at + (r >> 32) * len / 2^32`; it ends the
    /// chunk if the top `b ± 1` bits of `v` are below `len` (`b + 1` before
    /// `center`, `b - 1` from it), a chance of `len / 2^(b ± 1)`: the
    /// per-byte rate of normalized chunking times the segment's length.
    fn decide(&self, h: u64, at: usize, len: usize, center: usize, bits: u32) -> Option<usize> {
        let mut block = GenericArray::from(u128::from(h).to_le_bytes());
        self.prf.encrypt_block(&mut block);
        let v = u64::from_le_bytes(block[..8].try_into().expect("16-byte block"));
        let r = u64::from_le_bytes(block[8..].try_into().expect("16-byte block"));
        let candidate = at + (((r >> 32) * len as u64) >> 32) as usize;
        let rate_bits = if candidate < center { bits + 1 } else { bits - 1 };
        ((v >> (64 - rate_bits)) < len as u64).then_some(candidate)
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

    /// The obviously correct reference, read off tree-archive.md: every
    /// window hashed from scratch at every position, segments found one
    /// position at a time, one AES block through the `aes` crate from the
    /// key bytes.
    fn reference_cut(secret: &[u8; 32], src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        if src.len() <= min {
            return src.len();
        }
        let key = ChunkerKey::new(secret);
        let aes_key = blake3::derive_key("hoard 2026-12 keyed chunker aes-128 key", secret);
        let aes = Aes128::new(GenericArray::from_slice(&aes_key[..16]));
        let hash = |i: usize| {
            let mut h = 0u64;
            for &b in &src[i + 1 - WINDOW..=i] {
                h = (h << 1).wrapping_add(key.gear[b as usize]);
            }
            h
        };
        let end = src.len().min(max);
        let b = avg.trailing_zeros();
        let (a, spacing, span) = (avg as u64 / 64, avg / 64, avg / 16);
        let mut at = min;
        while at < end {
            let mut next = at + 1;
            while next < end && next < at + span && !(next >= at + spacing && hash(next) % a == 0) {
                next += 1;
            }
            let mut block = GenericArray::from(u128::from(hash(at)).to_le_bytes());
            aes.encrypt_block(&mut block);
            let v = u64::from_le_bytes(block[..8].try_into().unwrap());
            let r = u64::from_le_bytes(block[8..].try_into().unwrap());
            let len = (next - at) as u128;
            let candidate = at + ((u128::from(r >> 32) * len) >> 32) as usize;
            let rate = if candidate < avg.min(end) { b + 1 } else { b - 1 };
            if u128::from(v) * (1 << rate) < len << 64 {
                return candidate + 1;
            }
            at = next;
        }
        end
    }

    #[test]
    fn matches_the_reference_and_respects_min_and_max() {
        for (avg, len) in [(4096, 1 << 20), (64 << 10, 4 << 20)] {
            let key = ChunkerKey::new(&[7; 32]);
            let src = data(len, 3);
            let (min, max) = (avg / 4, avg * 4);
            let mut at = 0;
            let mut n = 0;
            while at < src.len() {
                let got = key.cut(&src[at..], min, avg, max);
                assert_eq!(
                    got,
                    reference_cut(&[7; 32], &src[at..], min, avg, max),
                    "avg {avg} at {at}"
                );
                assert!(got <= max && (got > min || at + got == src.len()));
                at += got;
                n += 1;
            }
            assert!(n > len / avg / 2, "{n} chunks of {len} bytes at avg {avg}");
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
                7552, 8760, 14740, 20066, 24398, 29244, 33837, 38477, 40811, 47896, 55974, 61688, 63088,
                65536
            ]
        );
    }

    /// Chunk sizes follow normalized chunking: the mean is near the
    /// average, and neither tail is empty.
    #[test]
    fn cuts_depend_on_the_key_and_their_sizes_on_avg() {
        let (a, b) = (ChunkerKey::new(&[1; 32]), ChunkerKey::new(&[2; 32]));
        let src = data(8 << 20, 5);
        for avg in [4096, 64 << 10] {
            let (min, max) = (avg / 4, avg * 4);
            let ca = cuts(&a, &src, min, avg, max);
            let cb = cuts(&b, &src, min, avg, max);
            let common = ca.iter().filter(|c| cb.contains(c)).count();
            assert!(
                common * 10 < ca.len(),
                "{common} of {} cuts shared across keys",
                ca.len()
            );
            let mean = src.len() / ca.len();
            assert!(
                (avg * 3 / 4..avg * 3 / 2).contains(&mean),
                "mean chunk {mean} at avg {avg}"
            );
        }
    }

    /// After an insertion the segments line up again within a few anchors,
    /// so the next cut is an old one again, as with FastCDC.
    #[test]
    fn an_insertion_changes_only_the_chunk_it_lands_in() {
        let key = ChunkerKey::new(&[1; 32]);
        let src = data(2 << 20, 5);
        let (min, avg, max) = (1024, 4096, 16384);
        let old = cuts(&key, &src, min, avg, max);
        let mut lost = 0;
        let edits = 28;
        for e in 0..edits {
            let (at, len) = (10_000 + e * 70_001, 1 + e % 7);
            let mut edited = src[..at].to_vec();
            edited.extend(std::iter::repeat_n(0xa5, len));
            edited.extend_from_slice(&src[at..]);
            let new: std::collections::HashSet<usize> = cuts(&key, &edited, min, avg, max)
                .into_iter()
                .filter(|c| *c > at + len)
                .map(|c| c - len)
                .collect();
            // Old cuts after the edited chunk's end that are gone.
            lost += old
                .iter()
                .filter(|c| **c > at)
                .skip(1)
                .filter(|c| !new.contains(c))
                .count();
        }
        assert!(lost <= edits / 4, "{lost} cuts lost after {edits} edits");
    }

    /// Runs of one byte value (a zeroed region, padding) make every
    /// position an anchor or none; either way a segment spans at least
    /// `spacing` bytes, so the AES calls stay rare.
    #[test]
    fn a_run_of_one_value_is_cut_like_any_data() {
        for key in [ChunkerKey::new(&[1; 32]), ChunkerKey::new(&[9; 32])] {
            let src = vec![0u8; 1 << 20];
            let c = cuts(&key, &src, 1024, 4096, 16384);
            assert_eq!(c.last(), Some(&src.len()));
            assert!(c.windows(2).all(|w| w[1] - w[0] <= 16384));
        }
    }
}
