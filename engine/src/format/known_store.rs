//! What a host remembers of a store it has used (`STATE/stores/HASH.json`,
//! format-spec/known-store.md): the store's identity, its protection mode
//! and key, and the newest snapshot of each group it has seen. Whoever
//! holds the store cannot change this file, so a store whose config or
//! snapshot list was changed behind the host's back is noticed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Protection;
use crate::format::snapshot::valid_time;

pub(crate) const KNOWN_STORE_FORMAT: &str = "hoard-known-store";
pub(crate) const KNOWN_STORE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownStore {
    /// Always "hoard-known-store".
    pub format: String,
    pub version: u32,
    /// The store as the user names it: absolute path or bucket URL.
    pub location: String,
    pub uuid: String,
    pub encryption: Protection,
    /// 16 hex digits; None for a plain store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// When this host first used the store, RFC 3339 UTC.
    pub first_seen: String,
    /// The key slot that opened last: tried first next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<String>,
    /// `KIND/ID` → time of the newest snapshot of that group seen here.
    #[serde(default)]
    pub newest: BTreeMap<String, String>,
}

impl KnownStore {
    /// Parses and checks a known-store file; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<KnownStore, String> {
        let k: KnownStore = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if k.format != KNOWN_STORE_FORMAT {
            return Err(format!("format is {:?}, not {KNOWN_STORE_FORMAT:?}", k.format));
        }
        if k.version != KNOWN_STORE_VERSION {
            return Err(format!(
                "version {}; this hoard reads version {KNOWN_STORE_VERSION}",
                k.version
            ));
        }
        let fingerprint_ok = match &k.key_fingerprint {
            None => k.encryption == Protection::None,
            Some(f) => {
                k.encryption != Protection::None && crate::chunking::digest::from_hex::<8>(f).is_some()
            }
        };
        if !fingerprint_ok {
            return Err(
                "key_fingerprint must be 16 hex digits exactly when encryption is sign or encrypt".into(),
            );
        }
        if let Some((group, time)) = k.newest.iter().find(|(g, t)| !valid_group(g) || !valid_time(t)) {
            return Err(format!("newest: bad entry {group:?}: {time:?}"));
        }
        Ok(k)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).expect("known store serialises");
        b.push(b'\n');
        b
    }
}

/// `KIND/ID` with a kind hoard knows and a safe id.
fn valid_group(g: &str) -> bool {
    g.split_once('/').is_some_and(|(kind, id)| {
        kind.parse::<crate::format::snapshot::Kind>().is_ok() && crate::format::snapshot::safe_component(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KnownStore {
        KnownStore {
            format: KNOWN_STORE_FORMAT.into(),
            version: KNOWN_STORE_VERSION,
            location: "/srv/store".into(),
            uuid: "6f1c2b1e-9d0a-4c55-8f7e-0a1b2c3d4e5f".into(),
            encryption: Protection::Encrypt,
            key_fingerprint: Some("0123456789abcdef".into()),
            first_seen: "2026-12-07T06:00:00Z".into(),
            last_slot: Some("key-1".into()),
            newest: [("vm/100".to_string(), "2026-12-07T06:00:00Z".to_string())].into(),
        }
    }

    #[test]
    fn round_trips_and_refuses_what_does_not_fit() {
        let k = sample();
        assert_eq!(KnownStore::parse(&k.to_bytes()).unwrap(), k);
        let mut plain_with_key = sample();
        plain_with_key.encryption = Protection::None;
        assert!(KnownStore::parse(&plain_with_key.to_bytes()).is_err());
        let mut bad_group = sample();
        bad_group
            .newest
            .insert("vm/../x".into(), "2026-12-07T06:00:00Z".into());
        assert!(KnownStore::parse(&bad_group.to_bytes()).is_err());
        let mut bad_time = sample();
        bad_time.newest.insert("ct/1".into(), "yesterday".into());
        assert!(KnownStore::parse(&bad_time.to_bytes()).is_err());
        assert!(KnownStore::parse(b"{").is_err());
    }
}
