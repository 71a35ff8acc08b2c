//! Opening the store a command names (`--store`, `HOARD_STORE`): a
//! directory, or the local cache of a store in a bucket; checked against
//! this host's memory of it, and unlocked when the command needs the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hoard_engine::format::store_address::is_url;
use hoard_engine::store::{remote, Access, Store};

use crate::{keys, known};

/// The store's directory: the one given, or the cache of a store in a
/// bucket (created from the bucket if needed). A group store (`hoard init
/// --group`) gets a group umask, so its members can use what this run
/// creates; a store that other users can enter is reported.
pub(crate) fn store_path(cli_store: &Option<PathBuf>) -> Result<PathBuf> {
    let path = cli_store
        .as_deref()
        .context("no store given: use --store DIR or set HOARD_STORE")?;
    if let Some(url) = store_url(path) {
        let cache = cache_dir(url);
        remote::attach(url, &cache)?;
        return Ok(cache);
    }
    use std::os::unix::fs::MetadataExt;
    // Only a store is judged by its mode: a file or another directory gets
    // its own error when it is opened.
    if let Some(m) = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir() && path.join("config.json").exists())
    {
        if matches!(Access::of(path), Ok(Access::Group(_))) {
            hoard_engine::umask::make_private(true);
        }
        if m.mode() & 0o007 != 0 {
            eprintln!(
                "hoard: warning: store {} can be entered by every user (mode {:o}), who can then read the backed-up data: `chmod 700 {}` (or 2770 for a group store)",
                path.display(),
                m.mode() & 0o7777,
                path.display()
            );
        }
    }
    Ok(path.to_path_buf())
}

/// The URL of a store in a bucket, if `--store` names one.
pub(crate) fn store_url(store: &Path) -> Option<&str> {
    store.to_str().filter(|s| is_url(s))
}

static CACHE_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Sets the cache directory of stores in buckets (`--cache-dir`, or a job's
/// `cache-dir`) for the rest of this run; None means the default.
pub(crate) fn set_cache_dir(dir: Option<PathBuf>) {
    let _ = CACHE_DIR.set(dir);
}

/// The cache directory of the store at `url`: `--cache-dir`, or the default.
pub(crate) fn cache_dir(url: &str) -> PathBuf {
    CACHE_DIR
        .get()
        .cloned()
        .flatten()
        .unwrap_or_else(|| remote::default_cache_dir(url))
}

/// Opens the store and checks it against this host's memory of it (uuid,
/// protection mode, key), refusing a store that changed.
fn open_checked(cli_store: &Option<PathBuf>) -> Result<Store> {
    let store = Store::open(&store_path(cli_store)?)?;
    known::check(&store)?;
    Ok(store)
}

/// Opens the store without its key: enough for listing, prune, forget,
/// GC, check and index rebuild, and for everything on a plain store.
pub(crate) fn open_store(cli_store: &Option<PathBuf>) -> Result<Store> {
    let store = open_checked(cli_store)?;
    known::observe(&store)?;
    Ok(store)
}

/// Opens the store and, if it is encrypted or signed, unlocks it: for
/// backup, restore, ls, cat, export and mount.
pub(crate) fn open_unlocked(cli_store: &Option<PathBuf>) -> Result<Store> {
    let mut store = open_checked(cli_store)?;
    keys::unlock(&mut store)?;
    known::observe(&store)?;
    Ok(store)
}

/// Opens the store unlocked when this run was given a key source, and
/// without the key otherwise: what verify and prune do (keyless, they
/// work at the CRC and name level, as a server without the key does).
pub(crate) fn open_keyed_if_given(cli_store: &Option<PathBuf>) -> Result<Store> {
    if keys::key_source_given() {
        open_unlocked(cli_store)
    } else {
        open_store(cli_store)
    }
}
