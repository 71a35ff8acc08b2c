//! `config.json`: what makes a directory a hoard store.

use serde::{Deserialize, Serialize};

use crate::crypto::keys::Derivation;
use crate::crypto::Protection;

pub(crate) const STORE_FORMAT: &str = "hoard-store";
/// Version of a plain store.
pub(crate) const STORE_VERSION: u32 = 1;
/// Version of an encrypted or signed store made before its config was
/// authenticated: still read and written, with the keys it was made with.
pub(crate) const LEGACY_PROTECTED_STORE_VERSION: u32 = 2;
/// Version of an encrypted or signed store: keys bound to the mode, and a
/// config MAC (`config_mac`). Older hoard builds refuse it instead of
/// misreading keyed digests and sealed records.
pub(crate) const PROTECTED_STORE_VERSION: u32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Always "hoard-store".
    pub format: String,
    /// Store layout version: 1 (plain), 2 or 3 (protected).
    pub version: u32,
    pub uuid: String,
    /// Default fixed chunk size for image archives, in bytes.
    pub chunk_size: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Versions 2 and 3: `sign` or `encrypt`.
    #[serde(default, skip_serializing_if = "is_none")]
    pub encryption: Protection,
    /// Versions 2 and 3: 16 hex digits naming the store's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Version 3: 64 hex digits, the MAC of [`authenticated_text`](Self::authenticated_text)
    /// under the store's config key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_mac: Option<String>,
}

fn is_none(p: &Protection) -> bool {
    *p == Protection::None
}

impl StoreConfig {
    /// What the config MAC covers: every other field, as one JSON array
    /// `[format, version, uuid, chunk_size, created, encryption,
    /// key_fingerprint]` (serde_json's compact form, which has exactly one
    /// spelling for these values).
    pub fn authenticated_text(&self) -> Vec<u8> {
        serde_json::to_vec(&(
            &self.format,
            self.version,
            &self.uuid,
            self.chunk_size,
            &self.created,
            self.encryption.as_str(),
            self.key_fingerprint.as_deref().unwrap_or(""),
        ))
        .expect("config text serialises")
    }

    /// How this store's keys derive from its secret.
    pub fn derivation(&self) -> Derivation {
        if self.version == LEGACY_PROTECTED_STORE_VERSION {
            Derivation::Shared
        } else {
            Derivation::ModeBound
        }
    }
}
