//! `config.json`: what makes a directory a hoard store.

use serde::{Deserialize, Serialize};

use crate::crypto::Protection;

pub const STORE_FORMAT: &str = "hoard-store";
/// Version of a plain store; [`PROTECTED_STORE_VERSION`] for one with a key.
pub const STORE_VERSION: u32 = 1;
/// Version of an encrypted or signed store: older hoard builds refuse it
/// instead of misreading keyed digests and sealed records.
pub const PROTECTED_STORE_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Always "hoard-store".
    pub format: String,
    /// Store layout version: [`STORE_VERSION`] or [`PROTECTED_STORE_VERSION`].
    pub version: u32,
    pub uuid: String,
    /// Default fixed chunk size for image archives, in bytes.
    pub chunk_size: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Version 2: `sign` or `encrypt`.
    #[serde(default, skip_serializing_if = "is_none")]
    pub encryption: Protection,
    /// Version 2: 16 hex digits naming the store's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

fn is_none(p: &Protection) -> bool {
    *p == Protection::None
}
