//! `hoard init`: a new, empty store (a directory or a bucket), private or
//! shared with a group, plain, signed or encrypted.

use anyhow::{bail, Context, Result};
use clap::Args;
use hoard_engine::{Access, ChunkSize, Store};

use crate::args::parse_chunk_size;
use crate::open::store_url;
use crate::open::StoreArgs;
use crate::{keys, known};

/// Create a new, empty store.
#[derive(Args)]
pub(crate) struct Init {
    /// Default chunk size for image archives: a power of two, 64K..16M.
    /// 64K matches QEMU's dirty-bitmap granularity, so scattered writes
    /// cost an incremental only the clusters they touched; larger
    /// chunks make a slightly faster first backup and a smaller index.
    #[arg(long, default_value = "64K", value_parser = parse_chunk_size)]
    chunk_size: ChunkSize,
    /// Share the store with this group's members (directories 2770,
    /// files 0660). Without it the store is private to its owner
    /// (0700 / 0600), whatever the umask.
    #[arg(long)]
    group: Option<String>,
    /// none; sign (keyed digests, manifest MACs: changes are found,
    /// content stays readable); or encrypt (also AES-256-GCM chunks).
    /// The secret goes into key slot key-1 under a new passphrase
    /// (HOARD_NEW_PASSWORD_FILE, HOARD_PASSWORD_FILE,
    /// HOARD_PASSWORD_COMMAND, HOARD_PASSWORD, or asked twice), or with
    /// --keyfile into that file only (or an existing key file's secret
    /// is used).
    #[arg(long, default_value = "none")]
    encryption: hoard_engine::Protection,
    /// Shorthand for --encryption encrypt.
    #[arg(long, conflicts_with = "encryption")]
    encrypt: bool,
    #[command(flatten)]
    kdf: keys::KdfArgs,
}

pub(crate) fn run(at: &StoreArgs, a: Init) -> Result<()> {
    let Init {
        chunk_size,
        group,
        encryption,
        encrypt,
        kdf,
    } = a;
    let given = at
        .store
        .as_deref()
        .context("no store given: use --store DIR|URL or set HOARD_STORE")?;
    let url = store_url(given);
    let cache = url.map(|u| at.cache_dir(u));
    let path = cache.as_deref().unwrap_or(given);
    if url.is_some() && group.is_some() {
        bail!("--group is for a store directory; a store in a bucket is shared through the bucket's credentials");
    }
    let shown = url.map_or_else(
        || path.display().to_string(),
        |u| format!("{u} (cache {})", path.display()),
    );
    let access = match group {
        None => Access::Private,
        Some(name) => {
            let g = nix::unistd::Group::from_name(&name)
                .with_context(|| format!("looking up group {name}"))?
                .with_context(|| format!("no group {name}"))?;
            hoard_engine::make_private(true);
            Access::Group(g.gid.as_raw())
        }
    };
    let protection = if encrypt {
        hoard_engine::Protection::Encrypt
    } else {
        encryption
    };
    if protection == hoard_engine::Protection::None {
        let store = match url {
            Some(url) => Store::init_remote(url, path, chunk_size, None)?,
            None => Store::init_with(path, chunk_size, access)?,
        };
        known::remember_new(&store);
        println!(
            "created store {shown} (uuid {}, chunk size {chunk_size})",
            store.config().uuid
        );
        return Ok(());
    }
    let (key, slot, told) = keys::first_key(protection, kdf, path, at.keyfile())?;
    let new_key = hoard_engine::NewStoreKey {
        protection,
        key: &key,
        slot: slot.as_ref().map(|f| ("key-1", f)),
    };
    let store = match url {
        Some(url) => Store::init_remote(url, path, chunk_size, Some(new_key))?,
        None => Store::init_protected(path, chunk_size, access, Some(new_key))?,
    };
    known::remember_new(&store);
    println!(
        "created {protection}ed store {shown} (uuid {}, chunk size {chunk_size}, key fingerprint {}); {told}",
        store.config().uuid,
        store.config().key_fingerprint.as_deref().unwrap_or("")
    );
    eprintln!(
        "hoard: keep a recovery copy of the key (`hoard key export --paper`, or --recipient AGE_PUBLIC_KEY): without the passphrase or a copy the backups cannot be read"
    );
    Ok(())
}
