//! The keys a protected store works with, derived from its secret: the
//! chunk digest key, the manifest MAC key and (encrypt mode) the chunk
//! encryption key. Derivation and the nonce scheme: format-spec/encryption.md.

use std::fmt;
use std::str::FromStr;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use zeroize::Zeroizing;

use std::sync::Arc;

use super::master_key::MasterKey;
use crate::chunking::digest::{ChunkHasher, Digest};
use crate::chunking::keyed_cdc::ChunkerKey;

/// Bytes of the random nonce that starts an encrypted payload.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag that ends it.
pub(crate) const TAG_LEN: usize = 16;
/// What encryption adds to a payload.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What a store's key protects (`hoard init --encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// Plain digests, plain chunks, manifests without a MAC.
    #[default]
    None,
    /// Keyed digests and manifest MACs: tampering is found, content is readable.
    Sign,
    /// Keyed digests, manifest MACs and AES-256-GCM chunk payloads.
    Encrypt,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::None => "none",
            Protection::Sign => "sign",
            Protection::Encrypt => "encrypt",
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protection {
    type Err = String;
    fn from_str(s: &str) -> Result<Protection, String> {
        match s {
            "none" => Ok(Protection::None),
            "sign" => Ok(Protection::Sign),
            "encrypt" => Ok(Protection::Encrypt),
            _ => Err(format!("invalid encryption {s:?}: use none, sign or encrypt")),
        }
    }
}

/// How a store's keys are derived from its secret (format-spec/encryption.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Derivation {
    /// Store version 2: one context per purpose, the same in sign and
    /// encrypt stores, so the mode could be switched under the same key.
    Shared,
    /// Store version 3: the mode is part of every context, so a sign store
    /// and an encrypt store of one secret share no key and no digest.
    ModeBound,
}

/// A payload failed authentication: the wrong key, or changed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (wrong key, or the bytes were changed)")]
pub struct AuthFailed;

/// The derived keys of one unlocked store.
pub struct StoreKeys {
    protection: Protection,
    fingerprint: [u8; 8],
    hasher: ChunkHasher,
    mac_key: Zeroizing<[u8; 32]>,
    /// Version 3 stores: the key of the config's MAC.
    config_key: Option<Zeroizing<[u8; 32]>>,
    /// Version 3 stores: the keyed chunker of tree archives.
    chunker: Option<Arc<ChunkerKey>>,
    /// Encrypt mode only.
    aead: Option<LessSafeKey>,
    /// Version 3 encrypt stores: the chunk key each record's own key is
    /// derived from ([`seal_record`](Self::seal_record)).
    record_keys: Option<Zeroizing<[u8; 32]>>,
    rng: SystemRandom,
}

impl fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoreKeys({}, {})",
            self.protection,
            crate::chunking::digest::to_hex(&self.fingerprint)
        )
    }
}

impl StoreKeys {
    /// The keys of a new (version 3) `protection` store whose secret is
    /// `master`. Panics on `Protection::None`, which has no keys.
    pub fn derive(master: &MasterKey, protection: Protection) -> StoreKeys {
        StoreKeys::derive_for(master, protection, Derivation::ModeBound)
    }

    /// The keys of a `protection` store whose secret is `master`, derived as
    /// its store version says. Panics on `Protection::None`.
    pub fn derive_for(master: &MasterKey, protection: Protection, derivation: Derivation) -> StoreKeys {
        assert!(protection != Protection::None, "a plain store has no keys");
        let sub = |purpose: &str| {
            let context = match derivation {
                Derivation::Shared => format!("hoard 2026-12 {purpose}"),
                Derivation::ModeBound => format!("hoard 2026-12 {protection} store {purpose}"),
            };
            Zeroizing::new(blake3::derive_key(&context, master.secret()))
        };
        let chunk_key = (protection == Protection::Encrypt).then(|| sub("chunk encryption key"));
        let aead = chunk_key.as_ref().map(|key| aes_key(key));
        StoreKeys {
            record_keys: chunk_key.filter(|_| derivation == Derivation::ModeBound),
            protection,
            fingerprint: master.fingerprint(),
            hasher: ChunkHasher::keyed(sub("chunk digest key")),
            mac_key: sub("manifest mac key"),
            config_key: (derivation == Derivation::ModeBound).then(|| sub("config mac key")),
            chunker: (derivation == Derivation::ModeBound)
                .then(|| Arc::new(ChunkerKey::new(&sub("chunker key")))),
            aead,
            rng: SystemRandom::new(),
        }
    }

    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// How these keys were derived: version 3 stores' are mode-bound.
    pub fn derivation(&self) -> Derivation {
        if self.config_key.is_some() {
            Derivation::ModeBound
        } else {
            Derivation::Shared
        }
    }

    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    pub fn hasher(&self) -> ChunkHasher {
        self.hasher.clone()
    }

    pub fn encrypts(&self) -> bool {
        self.aead.is_some()
    }

    /// The MAC of a manifest's bytes (keyed BLAKE3).
    pub fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, bytes).as_bytes()
    }

    /// The keyed chunker of this store's tree archives (version 3 stores;
    /// None for a version 2 store, which keeps FastCDC's public table).
    pub fn chunker(&self) -> Option<Arc<ChunkerKey>> {
        self.chunker.clone()
    }

    /// The MAC of a store config's authenticated text (version 3 stores;
    /// None for a version 2 store, whose config has none).
    pub fn config_mac(&self, text: &[u8]) -> Option<[u8; 32]> {
        let key = self.config_key.as_ref()?;
        Some(*blake3::keyed_hash(key, text).as_bytes())
    }

    /// Whether `mac` is the MAC of `bytes`, compared in constant time
    /// (blake3::Hash's equality), so that a server checking MACs for a
    /// client leaks nothing through timing.
    pub fn verify_mac(&self, bytes: &[u8], mac: &[u8; 32]) -> bool {
        blake3::keyed_hash(&self.mac_key, bytes) == blake3::Hash::from(*mac)
    }

    /// Seals the payload that starts at `buf[at]` in place: encrypts
    /// `buf[at + NONCE_LEN..]` under a fresh random nonce, which it writes
    /// to `buf[at..at + NONCE_LEN]`, and appends the tag. `aad` is
    /// authenticated too. Only in encrypt mode.
    pub fn seal(&self, aad: &[u8], buf: &mut Vec<u8>, at: usize) -> Result<(), AuthFailed> {
        let key = self.aead.as_ref().ok_or(AuthFailed)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| AuthFailed)?;
        seal_with(key, nonce, aad, buf, at)
    }

    /// The key that seals the chunk record of `digest` whose payload starts
    /// with `nonce`. A version 3 store derives one per record from both, so
    /// a nonce repeats under one key only if a chunk was sealed twice with
    /// it (a re-store of the same digest): the birthday bound applies per
    /// chunk, not per store (format-spec/encryption.md, "Nonces"). A
    /// version 2 store seals every record under its chunk key.
    fn record_key(
        &self,
        digest: &Digest,
        nonce: &[u8],
    ) -> Result<std::borrow::Cow<'_, LessSafeKey>, AuthFailed> {
        match &self.record_keys {
            Some(chunk_key) => {
                let mut h = blake3::Hasher::new_keyed(chunk_key);
                h.update(b"hoard record key\n").update(&digest.0).update(nonce);
                let key = Zeroizing::new(*h.finalize().as_bytes());
                Ok(std::borrow::Cow::Owned(aes_key(&key)))
            }
            None => self
                .aead
                .as_ref()
                .map(std::borrow::Cow::Borrowed)
                .ok_or(AuthFailed),
        }
    }

    /// [`seal`](Self::seal) of a chunk record's payload: under the record's
    /// own key in a version 3 store.
    pub fn seal_record(
        &self,
        digest: &Digest,
        aad: &[u8],
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), AuthFailed> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| AuthFailed)?;
        let key = self.record_key(digest, &nonce)?;
        seal_with(&key, nonce, aad, buf, at)
    }

    /// [`open`](Self::open) of a chunk record's payload.
    pub fn open_record(
        &self,
        digest: &Digest,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), AuthFailed> {
        let nonce = sealed.get(..NONCE_LEN).ok_or(AuthFailed)?;
        let key = self.record_key(digest, nonce)?;
        open_with(&key, aad, sealed, out)
    }

    /// Decrypts a sealed payload (nonce, ciphertext, tag) into `out`, which
    /// must be exactly as long as the ciphertext; nothing in `out` is to be
    /// used if this fails.
    pub fn open(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<(), AuthFailed> {
        open_with(self.aead.as_ref().ok_or(AuthFailed)?, aad, sealed, out)
    }
}

fn aes_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

/// Writes `nonce` to `buf[at..]`, encrypts what follows it in place under
/// `key` and appends the tag.
fn seal_with(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<(), AuthFailed> {
    buf[at..at + NONCE_LEN].copy_from_slice(&nonce);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf[at + NONCE_LEN..],
        )
        .map_err(|_| AuthFailed)?;
    buf.extend_from_slice(tag.as_ref());
    Ok(())
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<(), AuthFailed> {
    if sealed.len() != out.len() + SEAL_OVERHEAD {
        return Err(AuthFailed);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(out.len());
    out.copy_from_slice(ciphertext);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthFailed)?;
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| AuthFailed)?;
    key.open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(tag), out, 0..)
        .map_err(|_| AuthFailed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_every_changed_byte_fails() {
        let keys = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Encrypt);
        let mut buf = vec![0u8; NONCE_LEN];
        buf.extend_from_slice(b"secret content");
        keys.seal(b"header", &mut buf, 0).unwrap();
        assert_eq!(buf.len(), 14 + SEAL_OVERHEAD);
        assert!(!buf.windows(6).any(|w| w == b"secret"));
        let mut out = vec![0u8; 14];
        keys.open(b"header", &buf, &mut out).unwrap();
        assert_eq!(&out, b"secret content");
        assert_eq!(keys.open(b"Header", &buf, &mut out), Err(AuthFailed));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            assert_eq!(keys.open(b"header", &bad, &mut out), Err(AuthFailed), "byte {i}");
        }
        let other = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Encrypt);
        assert_eq!(other.open(b"header", &buf, &mut out), Err(AuthFailed));
    }

    /// Version 3: each record has its own key, derived from its digest and
    /// nonce; version 2: the store's chunk key seals every record.
    #[test]
    fn records_are_sealed_under_their_own_keys_in_version_3() {
        let master = MasterKey::generate().unwrap();
        let (d, other) = (Digest([1; 32]), Digest([2; 32]));
        for (derivation, per_record) in [(Derivation::ModeBound, true), (Derivation::Shared, false)] {
            let keys = StoreKeys::derive_for(&master, Protection::Encrypt, derivation);
            let mut buf = vec![0u8; NONCE_LEN];
            buf.extend_from_slice(b"chunk content");
            keys.seal_record(&d, b"aad", &mut buf, 0).unwrap();
            let mut out = vec![0u8; 13];
            keys.open_record(&d, b"aad", &buf, &mut out).unwrap();
            assert_eq!(&out, b"chunk content");
            assert_eq!(
                keys.open_record(&other, b"aad", &buf, &mut out).is_ok(),
                !per_record
            );
            assert_eq!(keys.open(b"aad", &buf, &mut out).is_ok(), !per_record);
        }
    }

    #[test]
    fn keyed_digests_differ_by_key_and_from_plain() {
        let a = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Sign);
        let b = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Sign);
        let plain = ChunkHasher::PLAIN.digest(b"x");
        assert_ne!(a.hasher().digest(b"x"), plain);
        assert_ne!(a.hasher().digest(b"x"), b.hasher().digest(b"x"));
        let mut h = a.hasher().hasher();
        h.update(b"x");
        assert_eq!(
            crate::chunking::digest::Digest(*h.finalize().as_bytes()),
            a.hasher().digest(b"x")
        );
        assert!(!a.encrypts());
        assert_ne!(a.mac(b"m"), b.mac(b"m"));
    }
}
