//! The keyed content-defined chunker of protected stores (format-spec/
//! tree-archive.md, "Keyed chunking"): where a stream is cut depends on the
//! store's key, so that chunk lengths (visible in index files and packs
//! without the key) do not tell whoever holds the store whether, or where,
//! a file they know was backed up.
//!
//! The construction is the "UHF-then-PRF" of Truong et al., "Breaking and
//! Fixing Content-Defined Chunking" (eprint 2025/558): a Gear rolling hash
//! over the last 64 bytes, with a gear table derived from the key,
//! compresses the window into 64 bits, and the cut decision looks only at
//! AES-128 (under a second key) of that hash. Observed cuts are then
//! pseudo-random functions of their windows and give no equations about the
//! table, unlike a keyed gear table alone, whose cut bits are linear in it.
//! Every decision depends on its own window only, never on where the chunk
//! began, so cuts resynchronise right after an edit, as FastCDC's do. Sizes
//! follow FastCDC 2020: nothing is cut before `min`, normalized chunking (a
//! stricter mask before `avg`, a looser one after), a forced cut at `max`.
//!
//! The price is one AES block per position; `aes_batch` makes it as cheap
//! as the CPU allows, and the window hashes are computed in four
//! independent lanes so the serial add chain does not bound them.

use std::ops::Range;

use super::aes_batch::AesBatch;

/// The Gear hash forgets a byte after 64 shifts: the window.
const WINDOW: usize = 64;
/// Independent hash chains per batch (`window_hashes`).
const LANES: usize = 4;
/// Positions hashed and encrypted per batch.
const BATCH: usize = 4096;
/// A range is split among threads only in pieces of at least this many
/// positions: below it a thread costs more than it saves.
const PARALLEL_MIN: usize = 256 << 10;

/// A position that can end a chunk: its decision value passes the loose
/// mask, and `strict` says whether it passes the strict one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub at: usize,
    pub strict: bool,
}

/// The two masks of normalized chunking for an average of `avg` (a power
/// of two): `b + 1` low bits before the average, `b - 1` after.
#[derive(Clone, Copy)]
struct Masks {
    strict: u64,
    loose: u64,
}

impl Masks {
    fn new(avg: usize) -> Masks {
        let bits = avg.trailing_zeros();
        Masks {
            strict: (1u64 << (bits + 1)) - 1,
            loose: (1u64 << (bits - 1)) - 1,
        }
    }
}

/// Where the chunk that starts at `start` ends, given the candidates from
/// `start + min` on (in order; those before are ignored) and `len`, the
/// bytes held from `start` (at least `max` unless the stream ends): the
/// same answer as [`ChunkerKey::cut`] over those bytes.
pub fn pick(
    candidates: impl IntoIterator<Item = Candidate>,
    start: usize,
    len: usize,
    min: usize,
    avg: usize,
    max: usize,
) -> usize {
    if len <= min {
        return len;
    }
    let end = len.min(max);
    let center = avg.min(end);
    candidates
        .into_iter()
        .filter(|c| c.at >= start + min)
        .take_while(|c| c.at < start + end)
        .find(|c| c.at - start >= center || c.strict)
        .map_or(end, |c| c.at - start + 1)
}

/// Threads a large scan may use: the cores, at most four.
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// The secrets of one store's chunker.
pub struct ChunkerKey {
    gear: Box<[u64; 256]>,
    prf: AesBatch,
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
        let prf = AesBatch::new(aes_key[..16].try_into().expect("16 bytes"));
        ChunkerKey { gear, prf }
    }

    /// The length of the first chunk of `src`: every byte of `src` up to
    /// it must be there (the caller holds at least `max` bytes unless the
    /// stream ends). The rule itself; a stream is cut faster by
    /// [`candidates`](Self::candidates) and [`pick`].
    pub fn cut(&self, src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        if src.len() <= min {
            return src.len();
        }
        let end = src.len().min(max);
        let masks = Masks::new(avg);
        let center = avg.min(end);
        let mut cut = end;
        self.scan(src, min..end, |i, v| {
            let hit = v & masks.loose == 0 && (i >= center || v & masks.strict == 0);
            if hit {
                cut = i + 1;
            }
            hit
        });
        cut
    }

    /// Every position of `range` in `src` whose decision value passes the
    /// loose mask of `avg` (the only ones that can end a chunk), appended
    /// to `out` in order, with whether it passes the strict one too.
    /// Decisions depend on their window alone, so a large range is split
    /// among up to four threads.
    pub fn candidates(&self, src: &[u8], range: Range<usize>, avg: usize, out: &mut Vec<Candidate>) {
        let masks = Masks::new(avg);
        let scan = |range: Range<usize>| {
            let mut found = Vec::new();
            self.scan(src, range, |i, v| {
                if v & masks.loose == 0 {
                    found.push(Candidate {
                        at: i,
                        strict: v & masks.strict == 0,
                    });
                }
                false
            });
            found
        };
        let parts = threads().min(range.len() / PARALLEL_MIN).max(1);
        if parts == 1 {
            out.extend(scan(range));
            return;
        }
        let per = range.len().div_ceil(parts);
        let pieces: Vec<Range<usize>> = (0..parts)
            .map(|k| range.start + k * per..(range.start + (k + 1) * per).min(range.end))
            .collect();
        std::thread::scope(|s| {
            let rest: Vec<_> = pieces[1..].iter().map(|r| s.spawn(|| scan(r.clone()))).collect();
            out.extend(scan(pieces[0].clone()));
            for h in rest {
                out.extend(h.join().expect("a chunker thread panicked"));
            }
        });
    }

    /// Calls `stop(i, v(i))` for the positions of `range` in order until
    /// it returns true; `v(i)` is the low half of AES-128 of the window
    /// hash ending at `i`.
    fn scan(&self, src: &[u8], range: Range<usize>, mut stop: impl FnMut(usize, u64) -> bool) {
        // Small batches waste little past a cut; large ones keep the lanes
        // and the AES units busy.
        let batch = range.len().min(BATCH);
        let mut hashes = vec![0u64; batch];
        let mut prf = vec![0u64; batch];
        let mut at = range.start;
        while at < range.end {
            let n = batch.min(range.end - at);
            self.window_hashes(src, at..at + n, &mut hashes[..n]);
            self.prf.low_halves(&hashes[..n], &mut prf[..n]);
            if (at..).zip(&prf[..n]).any(|(i, v)| stop(i, *v)) {
                return;
            }
            at += n;
        }
    }

    /// `out[k]` = the Gear hash of the window ending at position
    /// `range.start + k` (the 64 bytes up to it; fewer at the stream's
    /// start). The range is split into four lanes, each warmed up on the
    /// window before its first position, so four add chains run at once.
    fn window_hashes(&self, src: &[u8], range: Range<usize>, out: &mut [u64]) {
        let gear = &*self.gear;
        let per = range.len() / LANES;
        let roll = |h: u64, b: u8| (h << 1).wrapping_add(gear[b as usize]);
        let warm = |at: usize| {
            src[at.saturating_sub(WINDOW - 1)..at]
                .iter()
                .fold(0, |h, &b| roll(h, b))
        };
        let starts: [usize; LANES] = std::array::from_fn(|l| range.start + l * per);
        let mut h = starts.map(warm);
        let lanes = starts.map(|s| &src[s..s + per]);
        let (o0, rest) = out.split_at_mut(per);
        let (o1, rest) = rest.split_at_mut(per);
        let (o2, rest) = rest.split_at_mut(per);
        let (o3, tail) = rest.split_at_mut(per);
        for k in 0..per {
            h[0] = roll(h[0], lanes[0][k]);
            h[1] = roll(h[1], lanes[1][k]);
            h[2] = roll(h[2], lanes[2][k]);
            h[3] = roll(h[3], lanes[3][k]);
            (o0[k], o1[k], o2[k], o3[k]) = (h[0], h[1], h[2], h[3]);
        }
        // The last lane runs on over the positions the split left over.
        let mut last = h[LANES - 1];
        for (o, &b) in tail.iter_mut().zip(&src[range.start + LANES * per..range.end]) {
            last = roll(last, b);
            *o = last;
        }
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
    /// hashed from scratch, one AES block through the `aes` crate, from the
    /// key bytes (not through `ChunkerKey`'s batch).
    fn reference_cut(secret: &[u8; 32], src: &[u8], min: usize, avg: usize, max: usize) -> usize {
        use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
        if src.len() <= min {
            return src.len();
        }
        let key = ChunkerKey::new(secret);
        let aes_key = blake3::derive_key("hoard 2026-12 keyed chunker aes-128 key", secret);
        let aes = aes::Aes128::new(GenericArray::from_slice(&aes_key[..16]));
        let end = src.len().min(max);
        let bits = avg.trailing_zeros();
        for i in min..end {
            let mut h = 0u64;
            for &b in &src[i + 1 - WINDOW..=i] {
                h = (h << 1).wrapping_add(key.gear[b as usize]);
            }
            let mut block = GenericArray::from(u128::from(h).to_le_bytes());
            aes.encrypt_block(&mut block);
            let v = u64::from_le_bytes(block[..8].try_into().unwrap());
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
            assert_eq!(n, reference_cut(&[7; 32], &src[at..], min, avg, max), "at {at}");
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
            [1754, 2845, 9837, 14146, 19585, 25094, 31068, 40042, 44466, 52116, 54856, 57566, 62213, 65536]
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
    }

    /// A decision depends on its window only, never on where its chunk
    /// began: after an insertion of any length the very next cut is an old
    /// one again, as with FastCDC. (Grouping four positions to one AES
    /// block from the chunk's start, as this chunker first did, lost four
    /// or five chunks per edit whenever the length was not a multiple of
    /// four, until the groups happened to line up again.)
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

    /// Candidates found on several threads are the positions the rule
    /// would stop at, in order.
    #[test]
    fn candidates_on_all_cores_are_the_rules_stops() {
        let key = ChunkerKey::new(&[3; 32]);
        let src = data(3 * PARALLEL_MIN, 8);
        let avg = 4096;
        let mut found = Vec::new();
        key.candidates(&src, 100..src.len(), avg, &mut found);
        let masks = Masks::new(avg);
        let mut want = Vec::new();
        key.scan(&src, 100..src.len(), |i, v| {
            if v & masks.loose == 0 {
                want.push(Candidate {
                    at: i,
                    strict: v & masks.strict == 0,
                });
            }
            false
        });
        assert!(want.len() > 100);
        assert_eq!(found, want);
    }
}
