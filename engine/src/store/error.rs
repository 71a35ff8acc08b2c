//! How the store fails.

use std::io;
use std::path::{Path, PathBuf};

use super::config::{PROTECTED_STORE_VERSION, STORE_VERSION};
use super::index::IndexError;
use super::scratch::ScratchError;
use crate::chunking::digest::Digest;
use crate::crypto::Protection;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::RecordError;
use crate::format::key_wrap::KeyError;
use crate::format::pack::PackError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {0} does not exist (create it with `hoard init --store {0}`)")]
    Missing(PathBuf),
    #[error("{0} is not a hoard store (no config.json)")]
    NotAStore(PathBuf),
    #[error("{0} is a file, not a store (a store is the directory `hoard init` made)")]
    NotADirectory(PathBuf),
    #[error("cannot open store {}: it belongs to {owner} (mode {mode:o}) and {me} cannot enter it; run as {owner}, or share it with a group (`hoard init --group G` makes a store its members can all use; docs/using.md, \"Privacy and other local users\")", path.display())]
    NoAccess {
        path: PathBuf,
        owner: String,
        me: String,
        mode: u32,
    },
    #[error("{path}: malformed store config: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("store {path} has format version {found}; this hoard reads versions {STORE_VERSION} to {PROTECTED_STORE_VERSION}")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("store {0} has no chunk index; rebuild it from the packs with `hoard index rebuild`")]
    IndexMissing(PathBuf),
    #[error("cannot create store in {0}: directory is not empty")]
    NotEmpty(PathBuf),
    #[error("cannot create store in {}: it holds lost+found, so it is the root of a file system; create the store in a directory of its own (`hoard init --store {}`)", .0.display(), .0.join("hoard").display())]
    FileSystemRoot(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// An object store's error; its message names the object's URL.
    #[error("{0}")]
    Remote(io::Error),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Snapshot(#[from] crate::format::snapshot::SnapshotError),
    #[error("writer lease {lease} lapsed (not refreshed within {ttl_secs}s: this process was stopped, or the bucket unreachable); another host may have taken over, so this run writes nothing more and publishes nothing")]
    LeaseLost { lease: String, ttl_secs: u64 },
    #[error("cannot start {what}: another maintenance operation holds the store ({holder})")]
    Busy { what: String, holder: String },
    #[error("chunk {digest} is not in the store index")]
    ChunkMissing { digest: Digest },
    #[error("chunk {digest} has {found} bytes; the index needs {expected}")]
    ChunkLength {
        digest: Digest,
        found: usize,
        expected: usize,
    },
    #[error("chunk {digest} in pack {pack}: {source}")]
    ChunkDamaged {
        digest: Digest,
        pack: PathBuf,
        source: RecordError,
    },
    #[error("store {store} is {protection}ed: {what} needs its key (a passphrase from HOARD_PASSWORD_FILE, HOARD_PASSWORD_COMMAND or the prompt, or --keyfile)")]
    Locked {
        store: PathBuf,
        protection: Protection,
        what: String,
    },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("the passphrase opens none of the store's key slots ({tried})")]
    WrongPassphrase { tried: String },
    #[error("{path}: this is the key of a {key}, but the store's config describes a {store}: its protection mode or version was changed (by whoever holds the store, or by hand); nothing was read or written")]
    KeyStoreMismatch {
        path: PathBuf,
        key: crate::format::key_file::KeyFor,
        store: crate::format::key_file::KeyFor,
    },
    #[error("{path}: fails authentication with the store's key: its protection mode or another field was changed by someone without the key (or the file was damaged); nothing is read or written through it")]
    ConfigForged { path: PathBuf },
    #[error("store {location} is not the store this host has used there since {since}: {changes}. Whoever holds the store may have changed it; nothing was read or written. If you re-created or re-keyed it yourself, run `hoard known-stores forget {location}` (this host's memory of it: {})", memory.display())]
    StoreChanged {
        location: String,
        changes: String,
        since: String,
        memory: PathBuf,
    },
    #[error("the key (fingerprint {found}) is not this store's (fingerprint {expected})")]
    WrongKey { found: String, expected: String },
    #[error("invalid key slot name {0:?}: use 1-128 characters of A-Z a-z 0-9 . _ - not starting with '.'")]
    BadSlotName(String),
    #[error("key slot {0} already exists")]
    SlotExists(String),
    #[error("no key slot {0} (see `hoard key list`)")]
    NoSuchSlot(String),
    #[error("notes of {len} bytes: at most {max} are kept (a description, not a document)", max = crate::format::notes::NOTES_MAX)]
    NotesTooLong { len: usize },
    #[error("group notes are kept only in stores on a file system for now; put the note on a snapshot ({0}/latest)")]
    GroupNotesInBucket(String),
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NoAccess { .. } => ErrorKind::Io,
            StoreError::Missing(_)
            | StoreError::NotAStore(_)
            | StoreError::NotADirectory(_)
            | StoreError::IndexMissing(_) => ErrorKind::NotFound,
            StoreError::ChunkMissing { .. } => ErrorKind::NotFound,
            StoreError::BadConfig { .. } | StoreError::ChunkLength { .. } => ErrorKind::Damaged,
            StoreError::ChunkDamaged { source, .. } => source.kind(),
            StoreError::UnsupportedVersion { .. } => ErrorKind::Damaged,
            StoreError::NotEmpty(_) | StoreError::FileSystemRoot(_) => ErrorKind::Invalid,
            StoreError::Io { source, .. } | StoreError::Remote(source) => io_kind(source),
            StoreError::Index(e) => e.kind(),
            StoreError::Pack(e) => e.kind(),
            StoreError::Scratch(e) => e.kind(),
            StoreError::Snapshot(e) => e.kind(),
            StoreError::Busy { .. } | StoreError::LeaseLost { .. } => ErrorKind::Busy,
            StoreError::Locked { .. }
            | StoreError::WrongPassphrase { .. }
            | StoreError::KeyStoreMismatch { .. }
            | StoreError::WrongKey { .. }
            | StoreError::ConfigForged { .. }
            | StoreError::StoreChanged { .. } => ErrorKind::Auth,
            StoreError::Key { source, .. } => match source {
                KeyError::WrongPassphrase | KeyError::FingerprintMismatch => ErrorKind::Auth,
                KeyError::Malformed(_) => ErrorKind::Damaged,
                _ => ErrorKind::Other,
            },
            StoreError::BadSlotName(_) => ErrorKind::Invalid,
            StoreError::SlotExists(_) => ErrorKind::Invalid,
            StoreError::NoSuchSlot(_) => ErrorKind::NotFound,
            StoreError::NotesTooLong { .. } | StoreError::GroupNotesInBucket(_) => ErrorKind::Invalid,
        }
    }

    fn context(&self) -> Context {
        match self {
            StoreError::Missing(root)
            | StoreError::NotAStore(root)
            | StoreError::NotADirectory(root)
            | StoreError::NoAccess { path: root, .. }
            | StoreError::IndexMissing(root)
            | StoreError::NotEmpty(root)
            | StoreError::FileSystemRoot(root) => Context {
                store: Some(root.clone()),
                ..Context::default()
            },
            StoreError::BadConfig { path, .. }
            | StoreError::ConfigForged { path }
            | StoreError::UnsupportedVersion { path, .. }
            | StoreError::Io { path, .. } => Context::path(path),
            StoreError::Index(e) => e.context(),
            StoreError::Pack(e) => e.context(),
            StoreError::Scratch(e) => e.context(),
            StoreError::Snapshot(e) => e.context(),
            StoreError::Busy { .. }
            | StoreError::StoreChanged { .. }
            | StoreError::LeaseLost { .. }
            | StoreError::Remote(_)
            | StoreError::WrongPassphrase { .. }
            | StoreError::KeyStoreMismatch { .. }
            | StoreError::WrongKey { .. }
            | StoreError::BadSlotName(_)
            | StoreError::SlotExists(_)
            | StoreError::NoSuchSlot(_)
            | StoreError::NotesTooLong { .. }
            | StoreError::GroupNotesInBucket(_) => Context::default(),
            StoreError::Locked { store, .. } => Context {
                store: Some(store.clone()),
                ..Context::default()
            },
            StoreError::Key { path, .. } => Context::path(path),
            StoreError::ChunkMissing { digest } | StoreError::ChunkLength { digest, .. } => {
                Context::digest(*digest)
            }
            StoreError::ChunkDamaged { digest, pack, .. } => Context {
                path: Some(pack.clone()),
                ..Context::digest(*digest)
            },
        }
    }
}

impl StoreError {
    /// Whether the store's disk (or the bucket's cache disk) is full.
    /// Whether a server refused this for the token's role (what it may
    /// do is the server's to say; the rest of the run goes on).
    pub fn is_refused(&self) -> bool {
        matches!(self, StoreError::Remote(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            StoreError::Index(IndexError::NoSpace { .. }) => true,
            _ => false,
        }
    }

    /// Whether a chunk read failed because the chunk is gone or damaged
    /// (bad bytes, lost pack, no index entry), as opposed to a failure that
    /// may pass, such as an I/O error of the store's disk.
    pub fn means_chunk_lost(&self) -> bool {
        match self {
            // Locked, not lost: the key reads it.
            StoreError::ChunkDamaged {
                source: RecordError::NeedsKey,
                ..
            } => false,
            StoreError::ChunkMissing { .. }
            | StoreError::ChunkDamaged { .. }
            | StoreError::ChunkLength { .. } => true,
            StoreError::Pack(PackError::Record { .. }) => true,
            StoreError::Pack(PackError::Io { source, .. }) => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
