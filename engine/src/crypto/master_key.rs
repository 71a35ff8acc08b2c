//! The store's secret: 32 random bytes, zeroed when dropped, named by a
//! fingerprint (wrapping it in a key file is format::key_wrap's).

use ring::rand::{SecureRandom, SystemRandom};

use crate::chunking::digest::to_hex;

/// Bytes of a key's fingerprint.
pub(crate) const FINGERPRINT_LEN: usize = 8;

/// The operating system gave no random numbers.
#[derive(Debug, thiserror::Error)]
#[error("no random numbers from the operating system")]
pub struct NoRandom;

/// The 32-byte secret every key of an encrypted store derives from.
/// Zeroed when dropped; never printed.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", to_hex(&self.fingerprint()))
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned, exclusively borrowed byte; volatile so
            // the zeroing is not optimised away as a dead store.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey, NoRandom> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| NoRandom)?;
        Ok(MasterKey(secret))
    }

    /// The secret itself, for a recovery copy (`hoard key export`).
    pub fn from_secret(secret: [u8; 32]) -> MasterKey {
        MasterKey(secret)
    }

    /// The secret itself: only for a recovery copy and key derivation.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// Names the secret without revealing it: a BLAKE3 key derivation
    /// under its own context, truncated.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let full = blake3::derive_key("hoard 2026-12 master key fingerprint", &self.0);
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&full[..FINGERPRINT_LEN]);
        out
    }

    /// The fingerprint as the store's config and `hoard key show` write it.
    pub fn fingerprint_hex(&self) -> String {
        to_hex(&self.fingerprint())
    }
}
