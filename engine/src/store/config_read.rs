//! Reading a store's `config.json` and checking it, and the key against
//! it, before anything else of the store is touched.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::config::{StoreConfig, PROTECTED_STORE_VERSION, STORE_FORMAT, STORE_VERSION};
use super::error::{io_err, StoreError};
use super::root_check;
use crate::chunking::chunker::ChunkSize;
use crate::crypto::master_key::MasterKey;
use crate::crypto::{Protection, StoreKeys};

pub(crate) fn check_fingerprint(config: &StoreConfig, key: &MasterKey) -> Result<(), StoreError> {
    let found = key.fingerprint_hex();
    let expected = config.key_fingerprint.clone().unwrap_or_default();
    if found != expected {
        return Err(StoreError::WrongKey { found, expected });
    }
    Ok(())
}

/// The keys of the protected store at `root` whose config is `config`, if
/// `key` is its secret and (version 3) the config's MAC checks under it:
/// what [`super::Store::unlock`] takes, and what an index rebuild checks records
/// with before the store has an index to open.
pub fn config_keys(root: &Path, config: &StoreConfig, key: &MasterKey) -> Result<Arc<StoreKeys>, StoreError> {
    check_fingerprint(config, key)?;
    let keys = Arc::new(StoreKeys::derive_for(key, config.encryption, config.derivation()));
    if let Some(expected) = keys.config_mac(&config.authenticated_text()) {
        let given = config
            .config_mac
            .as_deref()
            .and_then(crate::chunking::digest::from_hex::<32>);
        // Constant time, as every MAC comparison here.
        if given.is_none_or(|g| blake3::Hash::from(g) != blake3::Hash::from(expected)) {
            return Err(StoreError::ConfigForged {
                path: root.join("config.json"),
            });
        }
    }
    Ok(keys)
}

/// Whether this user can open the store's directory, as a [`StoreError`].
pub(crate) fn check_root(root: &Path) -> Result<(), StoreError> {
    use root_check::RootProblem;
    let path = root.to_path_buf();
    root_check::check_root(root).map_err(|p| match p {
        RootProblem::Missing => StoreError::Missing(path),
        RootProblem::NotADirectory => StoreError::NotADirectory(path),
        RootProblem::NoAccess { owner, me, mode } => StoreError::NoAccess {
            path,
            owner,
            me,
            mode,
        },
        RootProblem::Io(e) => io_err(root)(e),
    })
}

/// Reads and validates `config.json`: is this a store, of a version we read?
pub fn read_config(root: &Path) -> Result<StoreConfig, StoreError> {
    check_root(root)?;
    let cfg_path = root.join("config.json");
    let bytes = match fs::read(&cfg_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NotAStore(root.to_path_buf()))
        }
        Err(e) => return Err(io_err(&cfg_path)(e)),
    };
    parse_config(root, &bytes)
}

/// Parses and checks `config.json` of the store at `root`; also the fuzz
/// target.
pub(crate) fn parse_config(root: &Path, bytes: &[u8]) -> Result<StoreConfig, StoreError> {
    let cfg_path = root.join("config.json");
    let bad = |message: String| StoreError::BadConfig {
        path: cfg_path.clone(),
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(STORE_FORMAT) {
        return Err(StoreError::NotAStore(root.to_path_buf()));
    }
    // Check the version before the rest, so a newer store says so instead
    // of failing on a field this version does not know.
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if (STORE_VERSION as u64..=PROTECTED_STORE_VERSION as u64).contains(&v) => {}
        Some(v) => {
            return Err(StoreError::UnsupportedVersion {
                path: root.to_path_buf(),
                found: v as u32,
            })
        }
        None => return Err(bad("missing version".into())),
    }
    let config: StoreConfig = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    ChunkSize::new(config.chunk_size).map_err(|e| bad(e.to_string()))?;
    let protected = config.encryption != Protection::None;
    if protected != (config.version != STORE_VERSION) {
        return Err(bad(format!(
            "version {} with encryption {}: versions 2 and 3 are exactly the sign and encrypt stores",
            config.version, config.encryption
        )));
    }
    let mac_ok = match &config.config_mac {
        None => config.version != PROTECTED_STORE_VERSION,
        Some(m) => {
            config.version == PROTECTED_STORE_VERSION && crate::chunking::digest::from_hex::<32>(m).is_some()
        }
    };
    if !mac_ok {
        return Err(bad(
            "config_mac must be 64 hex digits exactly in a version 3 store".into(),
        ));
    }
    let fingerprint_ok = match &config.key_fingerprint {
        None => !protected,
        Some(f) => protected && crate::chunking::digest::from_hex::<8>(f).is_some(),
    };
    if !fingerprint_ok {
        return Err(bad(
            "key_fingerprint must be 16 hex digits exactly when encryption is sign or encrypt".into(),
        ));
    }
    Ok(config)
}
