//! Opening the store a command names (`--store`, `HOARD_STORE`): a
//! directory, or the local cache of a store in a bucket; checked against
//! this host's memory of it, and unlocked when the command needs the key.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hoard_engine::{is_url, remote, server, Access, Repository, Store};

use crate::{keys, known};

/// Which store a command works on and how to reach it: `--store`,
/// `--cache-dir` and `--keyfile`, global options of every command (a job
/// gives its own, from its file).
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct StoreArgs {
    /// Store: a directory, or an S3 bucket as http(s)://HOST[:PORT]/BUCKET[/PREFIX]
    /// (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_REGION, else from profile AWS_PROFILE (default) of
    /// ~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE; per-request timeout
    /// HOARD_S3_TIMEOUT seconds, default 30).
    #[arg(long, env = "HOARD_STORE", global = true, value_name = "DIR|URL")]
    pub(crate) store: Option<PathBuf>,
    /// Cache directory of a store in a bucket: its chunk index and copies of
    /// its config, keys and snapshot indexes. It may be deleted at any time
    /// (it is rebuilt from the bucket). Default: ~/.cache/hoard/HASH-OF-URL.
    #[arg(long, env = "HOARD_CACHE_DIR", global = true, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Key file of an encrypted or signed store, instead of its key slots
    /// (its passphrase comes from HOARD_PASSWORD_FILE, HOARD_PASSWORD_COMMAND,
    /// HOARD_PASSWORD or the prompt, as a slot's does).
    #[arg(long, env = "HOARD_KEYFILE", global = true, value_name = "FILE")]
    pub(crate) keyfile: Option<PathBuf>,
    /// A repository on a backup server (`hoard serve`) instead of --store:
    /// https://HOST[:PORT][/NAMESPACE] (port 8007 if not given). The token
    /// comes from --token-file or HOARD_TOKEN.
    #[arg(long, env = "HOARD_REPO", global = true, value_name = "URL")]
    pub(crate) repo: Option<String>,
    /// SHA-256 fingerprint of the server's certificate, as `hoard serve`
    /// printed it; without it the system's CAs must vouch for the server.
    #[arg(long, env = "HOARD_FINGERPRINT", global = true, value_name = "HEX")]
    pub(crate) fingerprint: Option<String>,
    /// File holding the server token (NAME:SECRET); else HOARD_TOKEN.
    #[arg(long, env = "HOARD_TOKEN_FILE", global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
}

impl StoreArgs {
    pub(crate) fn keyfile(&self) -> Option<&Path> {
        self.keyfile.as_deref()
    }

    /// The cache directory of the store at `url`: `--cache-dir`, or the default.
    pub(crate) fn cache_dir(&self, url: &str) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| remote::default_cache_dir(url))
    }
}

/// The store's directory: the one given, or the cache of a store in a
/// bucket (created from the bucket if needed). A group store (`hoard init
/// --group`) gets a group umask, so its members can use what this run
/// creates; a store that other users can enter is reported.
pub(crate) fn store_path(at: &StoreArgs) -> Result<PathBuf> {
    let path = at
        .store
        .as_deref()
        .context("no store given: use --store DIR or set HOARD_STORE")?;
    if let Some(url) = store_url(path) {
        let cache = at.cache_dir(url);
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
            hoard_engine::make_private(true);
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

/// A client of the server repository `--repo` names, with its token.
pub(crate) fn client(at: &StoreArgs) -> Result<server::client::Client> {
    let url = at.repo.as_deref().context(
        "no server repository given: use --repo https://HOST[:PORT][/NAMESPACE] or set HOARD_REPO",
    )?;
    let token = match &at.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?,
        None => std::env::var("HOARD_TOKEN")
            .map_err(|_| anyhow!("no token: set HOARD_TOKEN or --token-file (see `hoard token create`)"))?,
    };
    let repo = server::client::RemoteRepo::parse(url)?;
    Ok(server::client::Client::new(
        repo,
        at.fingerprint.as_deref(),
        &token,
    )?)
}

/// The repository a command that works through the seam uses: the server
/// repository `--repo` names, or the store `--store` names (unlocked when
/// `unlock`, or when a key source was given).
pub(crate) fn open_repo(at: &StoreArgs, unlock: bool) -> Result<Box<dyn Repository>> {
    if at.repo.is_some() {
        let client = client(at)?;
        let url = client.repo().server.clone();
        let mut remote = server::remote_store::RemoteStore::open(client)
            .with_context(|| format!("cannot open server repository {url}"))?;
        if unlock || keys::key_source_given(at.keyfile()) {
            keys::unlock_remote(&mut remote, at.keyfile())?;
        }
        return Ok(Box::new(remote));
    }
    Ok(Box::new(if unlock {
        open_unlocked(at)?
    } else {
        open_keyed_if_given(at)?
    }))
}

/// [`open_repo`], unlocked, and a local directory for the run's scratch
/// files (fleecing images, a container's suspend copy): the store's tmp/,
/// or, through a server, a private directory under the system's.
pub(crate) fn open_repo_with_scratch(at: &StoreArgs) -> Result<(Box<dyn Repository>, PathBuf)> {
    if at.repo.is_some() {
        let scratch = std::env::temp_dir().join(format!("hoard-{}", nix::unistd::getuid()));
        hoard_engine::private_dir(&scratch).with_context(|| format!("{}", scratch.display()))?;
        return Ok((open_repo(at, true)?, scratch));
    }
    let store = open_unlocked(at)?;
    let scratch = store.root().join("tmp");
    Ok((Box::new(store), scratch))
}

/// Opens the store and checks it against this host's memory of it (uuid,
/// protection mode, key), refusing a store that changed.
fn open_checked(at: &StoreArgs) -> Result<Store> {
    if let Some(repo) = &at.repo {
        bail!(
            "this command works on a store on this host (--store), not yet through a server (--repo {repo})"
        );
    }
    let store = Store::open(&store_path(at)?)?;
    known::check(&store)?;
    Ok(store)
}

/// Opens the store without its key: enough for listing, prune, forget,
/// GC, check and index rebuild, and for everything on a plain store.
pub(crate) fn open_store(at: &StoreArgs) -> Result<Store> {
    let store = open_checked(at)?;
    known::observe(&store)?;
    Ok(store)
}

/// Opens the store and, if it is encrypted or signed, unlocks it: for
/// backup, restore, ls, cat, export and mount.
pub(crate) fn open_unlocked(at: &StoreArgs) -> Result<Store> {
    let mut store = open_checked(at)?;
    keys::unlock(&mut store, at.keyfile())?;
    known::observe(&store)?;
    Ok(store)
}

/// Opens the store unlocked when this run was given a key source, and
/// without the key otherwise: what verify and prune do (keyless, they
/// work at the CRC and name level, as a server without the key does).
pub(crate) fn open_keyed_if_given(at: &StoreArgs) -> Result<Store> {
    if keys::key_source_given(at.keyfile()) {
        open_unlocked(at)
    } else {
        open_store(at)
    }
}
