//! Small texts kept beside snapshots (a job's `task.log`, `notes`): plain
//! UTF-8, or in an encrypted store sealed with the store's AES-256-GCM key
//! under a magic line and associated data that bind each to its place
//! (format-spec/store.md).

use crate::crypto::keys::{AuthFailed, StoreKeys, NONCE_LEN, SEAL_OVERHEAD};

/// A stored text, as far as this reader can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedText {
    Text(String),
    /// Sealed, and no key was given.
    Sealed,
    /// Sealed, and it does not open with the key given: damaged, or not
    /// this place's.
    Damaged,
    /// Plain text in a store that encrypts: not written by hoard (which
    /// seals every such text there), so not shown.
    Unsealed,
}

/// How one kind of text is sealed: its magic line and what it is bound to.
pub(crate) struct Seal<'a> {
    pub magic: &'a [u8],
    pub aad: &'a [u8],
}

impl Seal<'_> {
    /// The bytes to store for `text`: sealed when `keys` encrypt.
    pub(crate) fn encode(&self, text: &str, keys: Option<&StoreKeys>) -> Result<Vec<u8>, AuthFailed> {
        let Some(keys) = keys.filter(|k| k.encrypts()) else {
            return Ok(text.as_bytes().to_vec());
        };
        let mut buf = Vec::with_capacity(self.magic.len() + text.len() + SEAL_OVERHEAD);
        buf.extend_from_slice(self.magic);
        let at = buf.len();
        buf.extend_from_slice(&[0; NONCE_LEN]);
        buf.extend_from_slice(text.as_bytes());
        keys.seal(self.aad, &mut buf, at)?;
        Ok(buf)
    }

    /// Reads stored bytes of a store that seals such texts (`sealed_store`:
    /// it encrypts) or not; never fails, says what it could not read.
    pub(crate) fn decode(&self, bytes: &[u8], sealed_store: bool, keys: Option<&StoreKeys>) -> SealedText {
        let Some(sealed) = bytes.strip_prefix(self.magic) else {
            if sealed_store {
                return SealedText::Unsealed;
            }
            return SealedText::Text(String::from_utf8_lossy(bytes).into_owned());
        };
        let Some(keys) = keys.filter(|k| k.encrypts()) else {
            return SealedText::Sealed;
        };
        let Some(len) = sealed.len().checked_sub(SEAL_OVERHEAD) else {
            return SealedText::Damaged;
        };
        let mut out = vec![0; len];
        match keys.open(self.aad, sealed, &mut out) {
            Ok(()) => SealedText::Text(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => SealedText::Damaged,
        }
    }
}
