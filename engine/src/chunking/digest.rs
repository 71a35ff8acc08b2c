//! Chunk digests: BLAKE3-256 of the uncompressed chunk bytes, keyed with
//! the store's digest key in an encrypted or signed store.

use std::fmt;

/// The content address of a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub(crate) const LEN: usize = 32;

    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        from_hex(s).map(Digest)
    }

    pub fn from_slice(s: &[u8]) -> Option<Digest> {
        s.try_into().ok().map(Digest)
    }
}

/// How a store addresses its chunks: plain BLAKE3, or BLAKE3 keyed with
/// the store's digest key, so that a digest says nothing about content to
/// whoever lacks the key (and no chunk dedups across keys). All-zero chunks
/// keep their plain digest in every store: they are never stored, and
/// readers without the key (GC, check) must still recognise them.
///
/// The key is shared, never copied, and wiped when the last holder drops it.
#[derive(Clone, Default)]
pub struct ChunkHasher(Option<std::sync::Arc<zeroize::Zeroizing<[u8; 32]>>>);

impl ChunkHasher {
    pub const PLAIN: ChunkHasher = ChunkHasher(None);

    pub fn keyed(key: zeroize::Zeroizing<[u8; 32]>) -> ChunkHasher {
        ChunkHasher(Some(std::sync::Arc::new(key)))
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    pub fn digest(&self, data: &[u8]) -> Digest {
        match &self.0 {
            None => Digest::of(data),
            Some(key) => Digest(*blake3::keyed_hash(key, data).as_bytes()),
        }
    }

    /// An incremental hasher that ends in the same digest as [`digest`](Self::digest).
    pub fn hasher(&self) -> blake3::Hasher {
        match &self.0 {
            None => blake3::Hasher::new(),
            Some(key) => blake3::Hasher::new_keyed(key),
        }
    }
}

impl fmt::Debug for ChunkHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_keyed() {
            "ChunkHasher(keyed)"
        } else {
            "ChunkHasher(plain)"
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// A set of digests hashed by their first eight bytes, which a
/// cryptographic digest has already spread evenly: the sets a backup asks
/// once per chunk need no second hash function (SipHash cost a backup of
/// unchanged 64 KiB chunks a few percent).
pub(crate) type DigestSet = std::collections::HashSet<Digest, std::hash::BuildHasherDefault<DigestHasher>>;

/// The [`DigestSet`] hasher: only for keys that are digests.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    /// The length prefix of the digest's bytes: always 32, so ignored.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses exactly `2 * N` lower-case hex digits: the one spelling hoard
/// writes, so that text a MAC or an AAD covers has exactly one form
/// (`u8::from_str_radix` would also take `+f` and upper case).
pub(crate) fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// True when every byte is zero. Written as a wide OR-fold so the compiler
/// vectorises it: it runs on every chunk before hashing.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|b| *b == 0)
}

/// Digest of `len` zero bytes, hashed without allocating `len` bytes.
pub(crate) fn zero_digest(len: usize) -> Digest {
    static ZEROS: [u8; 65536] = [0u8; 65536];
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len());
        hasher.update(&ZEROS[..n]);
        left -= n;
    }
    Digest(*hasher.finalize().as_bytes())
}

/// The zero digests an image with a given chunk size can contain: one for full
/// chunks and one for the shorter tail chunk. Lets backup and restore recognise
/// all-zero chunks by digest alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ZeroChunks {
    full_len: usize,
    full: Digest,
    tail: Option<(usize, Digest)>,
}

impl ZeroChunks {
    pub(crate) fn new(image_size: u64, chunk_size: u64) -> ZeroChunks {
        let full_len = chunk_size as usize;
        let tail_len = (image_size % chunk_size) as usize;
        ZeroChunks {
            full_len,
            full: zero_digest(full_len),
            tail: (tail_len != 0).then(|| (tail_len, zero_digest(tail_len))),
        }
    }

    /// Digest of a zero chunk of `len` bytes (`len` must be the full or tail length).
    pub(crate) fn digest(&self, len: usize) -> Digest {
        match self.tail {
            Some((tail_len, d)) if tail_len == len => d,
            _ if len == self.full_len => self.full,
            _ => zero_digest(len),
        }
    }

    pub(crate) fn is_zero_digest(&self, digest: &Digest) -> bool {
        *digest == self.full || self.tail.is_some_and(|(_, d)| d == *digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"hoard");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"é".repeat(32)), None);
        // One spelling only: no sign, no upper case.
        assert_eq!(from_hex::<1>("+f"), None);
        assert_eq!(from_hex::<1>("AB"), None);
        assert_eq!(from_hex::<2>("00ff"), Some([0, 255]));
    }

    #[test]
    fn is_zero_matches_naive_check() {
        for len in [0usize, 1, 63, 64, 65, 4096, 100_001] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            if len > 0 {
                buf[len - 1] = 1;
                assert!(!is_zero(&buf));
                buf[len - 1] = 0;
                buf[len / 2] = 0x80;
                assert!(!is_zero(&buf));
            }
        }
    }

    #[test]
    fn zero_digest_matches_plain_hash() {
        for len in [0usize, 1, 65536, 65537, 200_000] {
            assert_eq!(zero_digest(len), Digest::of(&vec![0u8; len]));
        }
        let z = ZeroChunks::new(10 * 65536 + 5, 65536);
        assert!(z.is_zero_digest(&Digest::of(&[0u8; 5])));
        assert!(z.is_zero_digest(&Digest::of(&vec![0u8; 65536])));
        assert!(!z.is_zero_digest(&Digest::of(&[1u8; 5])));
    }

    /// Golden vector: BLAKE3 is the store's address function; a change here
    /// would orphan every chunk of every existing store.
    #[test]
    fn digest_golden_vector() {
        assert_eq!(
            Digest::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
