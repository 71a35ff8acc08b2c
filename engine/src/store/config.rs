//! `config.json`: what makes a directory a hoard store.

use serde::{Deserialize, Serialize};

pub const STORE_FORMAT: &str = "hoard-store";
pub const STORE_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Always "hoard-store".
    pub format: String,
    /// Store layout version; this build reads and writes [`STORE_VERSION`].
    pub version: u32,
    pub uuid: String,
    /// Default fixed chunk size for image archives, in bytes.
    pub chunk_size: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}
