//! The on-disk repository: config, packs, chunk index, snapshots.
//!
//! ```text
//! STORE/config.json        format, version, uuid, default chunk size,
//!                          encryption and key fingerprint
//! STORE/keys/NAME.key      key slots of an encrypted or signed store
//! STORE/index/             RocksDB chunk index (a cache of the packs)
//! STORE/index.lock         flock taken for each index commit
//! STORE/packs/XX/ID.pack   chunk records
//! STORE/snapshots/KIND/ID/TIME/{manifest.json, NAME.img.fidx}
//! STORE/tmp/               per-process scratch space
//! ```

pub mod address;
pub mod aws_credentials;
pub mod backend;
pub mod backup_session;
pub mod catalog;
pub mod chunk_cache;
pub mod chunk_reader;
pub mod config;
pub mod failing;
pub mod index;
pub mod key_slots;
pub mod known_stores;
pub mod lease;
pub mod local_dir;
pub mod memory;
pub mod objects;
pub mod packs;
pub mod remote;
mod root_check;
pub mod s3;
pub mod scratch;
pub mod session;
pub mod snapshot_dir;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use chunk_reader::ChunkReader;
pub use config::{
    StoreConfig, LEGACY_PROTECTED_STORE_VERSION, PROTECTED_STORE_VERSION, STORE_FORMAT, STORE_VERSION,
};
pub use index::{ChunkIndex, ChunkLocation, IndexError};

use backend::ObjectBackend;
use catalog::Catalog;
use objects::{LocalObjects, StoreObjects};

use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{ChunkHasher, Digest};
use crate::crypto::master_key::MasterKey;
use crate::crypto::{Protection, StoreKeys};
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::{ChunkEncoder, Compression, RecordError};
use crate::format::chunk_decoder::ChunkDecoder;
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

pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    index: ChunkIndex,
    /// Where every object lives (chosen from the address at open); packs
    /// are read through `packs`, its pack backend.
    objects: Arc<dyn StoreObjects>,
    packs: Arc<dyn ObjectBackend>,
    catalog: Catalog,
    /// Set by [`unlock`](Store::unlock) on a protected store.
    keys: Option<Arc<StoreKeys>>,
}

/// How a new store is protected: the mode, the secret, and where its first
/// key file goes (a slot in the store, or nowhere: the caller keeps it).
#[derive(Clone, Copy)]
pub struct NewStoreKey<'a> {
    pub protection: Protection,
    pub key: &'a MasterKey,
    pub slot: Option<(&'a str, &'a crate::format::key_file::CheckedKeyFile)>,
}

/// Who may use a store besides its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nobody: directories 0700, files 0600 (the default).
    Private,
    /// The members of this group, to back up and restore too: directories
    /// 2770 (setgid, so every file belongs to the group), files 0660.
    Group(u32),
}

impl Access {
    /// What a store's root directory says: a setgid directory that its
    /// group may enter is a group store.
    pub fn of(root: &Path) -> io::Result<Access> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(root)?;
        Ok(if m.mode() & 0o2070 == 0o2070 {
            Access::Group(m.gid())
        } else {
            Access::Private
        })
    }

    fn dir_mode(self) -> u32 {
        match self {
            Access::Private => 0o700,
            Access::Group(_) => 0o2770,
        }
    }

    /// Gives `dir` this access's owner group and mode.
    fn apply(self, dir: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        if let Access::Group(gid) = self {
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| io_err(dir)(e.into()))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(self.dir_mode())).map_err(io_err(dir))
    }
}

impl Store {
    /// Creates a new private store in `root` (which must be absent or empty).
    pub fn init(root: &Path, chunk_size: ChunkSize) -> Result<Store, StoreError> {
        Store::init_with(root, chunk_size, Access::Private)
    }

    /// Creates a new store in `root` (which must be absent or empty),
    /// private or shared with a group, whatever the umask.
    pub fn init_with(root: &Path, chunk_size: ChunkSize, access: Access) -> Result<Store, StoreError> {
        Store::init_protected(root, chunk_size, access, None)
    }

    /// [`init_with`](Store::init_with), encrypted or signed with `key`. The
    /// store comes back unlocked.
    pub fn init_protected(
        root: &Path,
        chunk_size: ChunkSize,
        access: Access,
        key: Option<NewStoreKey>,
    ) -> Result<Store, StoreError> {
        let key = key.filter(|k| k.protection != Protection::None);
        if root.exists() {
            let names = fs::read_dir(root)
                .map_err(io_err(root))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err(root))?;
            if names == ["lost+found"] {
                return Err(StoreError::FileSystemRoot(root.to_path_buf()));
            }
            if !names.is_empty() {
                return Err(StoreError::NotEmpty(root.to_path_buf()));
            }
        } else {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(root)
                .map_err(io_err(root))?;
        }
        // The root first: from now on nobody else can reach what is below it.
        access.apply(root)?;
        for sub in ["packs", "snapshots", "tmp", key_slots::KEYS_DIR] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
            access.apply(&p)?;
        }
        ChunkIndex::create(&root.join("index"))?;
        let protection = key.as_ref().map_or(Protection::None, |k| k.protection);
        if let Some((name, file)) = key.as_ref().and_then(|k| k.slot) {
            key_slots::write(root, name, file, false)?;
        }
        let mut config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: if protection == Protection::None {
                STORE_VERSION
            } else {
                PROTECTED_STORE_VERSION
            },
            uuid: uuid::Uuid::new_v4().to_string(),
            chunk_size: chunk_size.bytes(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            encryption: protection,
            key_fingerprint: key.as_ref().map(|k| k.key.fingerprint_hex()),
            config_mac: None,
        };
        if let Some(k) = &key {
            let keys = StoreKeys::derive(k.key, protection);
            config.config_mac = keys
                .config_mac(&config.authenticated_text())
                .map(|mac| crate::chunking::digest::to_hex(&mac));
        }
        let json = serde_json::to_vec_pretty(&config).expect("config serialises");
        // The config is written last: a directory without it is not a store yet.
        write_durably(&root.join("config.json"), &json)?;
        let mut store = Store::open(root)?;
        if let Some(k) = key {
            store.unlock(k.key)?;
        }
        Ok(store)
    }

    /// Creates a new store in the bucket at `url` (see [`remote`]), with
    /// its cache in `cache` (absent or empty).
    pub fn init_remote(
        url: &str,
        cache: &Path,
        chunk_size: ChunkSize,
        key: Option<NewStoreKey>,
    ) -> Result<Store, StoreError> {
        remote::init(url, cache, |c| {
            Store::init_protected(c, chunk_size, Access::Private, key).map(drop)
        })?;
        let mut store = Store::open(cache)?;
        if let Some(k) = key.filter(|k| k.protection != Protection::None) {
            store.unlock(k.key)?;
        }
        Ok(store)
    }

    /// Opens the store at `root`: a local store, or the cache of one in a
    /// bucket, which is brought up to date with the bucket first.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        check_root(root)?;
        let store = Store::open_with(root, address::open(root)?)?;
        store.objects.refresh(&store.index)?;
        Ok(store)
    }

    /// Declares that this process is about to write the store: on a store
    /// in a bucket, takes the writer lease (refused while another host
    /// holds one) and catches up with what was written before it.
    pub fn begin_writing(&self, what: &str) -> Result<(), StoreError> {
        if self.objects.begin_writing(what)? {
            self.objects.refresh(&self.index)?;
        }
        Ok(())
    }

    /// Drops the index entries of packs that are gone (deleted, or
    /// replaced by something that is not a pack) and returns those packs'
    /// names: the index must never vouch for a chunk that cannot be read,
    /// or a backup would reuse it and publish a snapshot that cannot be
    /// restored (format-spec/store.md, "Reuse rests on packs that exist").
    pub fn forget_missing_packs(&self) -> Result<Vec<String>, StoreError> {
        self.objects.forget_missing_packs(&self.index)
    }

    /// Where the store is, as a user names it: the bucket's URL, or the
    /// directory's absolute path (symbolic links resolved).
    pub fn location(&self) -> String {
        self.objects.address()
    }

    /// Where the store's objects live.
    pub fn objects(&self) -> &dyn StoreObjects {
        self.objects.as_ref()
    }

    /// Opens the store at `root` with its packs in `packs` instead of
    /// `root/packs/`.
    pub fn open_with_packs(root: &Path, packs: Arc<dyn ObjectBackend>) -> Result<Store, StoreError> {
        Store::open_with(root, Arc::new(LocalObjects::new(root, packs)))
    }

    fn open_with(root: &Path, objects: Arc<dyn StoreObjects>) -> Result<Store, StoreError> {
        let config = read_config(root)?;
        if !root.join("index").is_dir() {
            return Err(StoreError::IndexMissing(root.to_path_buf()));
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        // The index reader writes a small log when it opens, and RocksDB (as
        // Debian builds it) aborts if that write fails. On a full store disk
        // the log goes to the system's temporary directory instead, so a
        // full backup disk can still be listed, verified and restored from.
        let scratch = if index::ensure_free_space(&tmp).is_ok() {
            tmp
        } else {
            index::ensure_free_space(&std::env::temp_dir())?;
            std::env::temp_dir()
        };
        let index = ChunkIndex::open(&root.join("index"), &root.join("index.lock"), &scratch)?;
        let protection = config.encryption;
        Ok(Store {
            root: root.to_path_buf(),
            config,
            index,
            packs: objects.packs(),
            catalog: Catalog::new(root, protection, objects.clone()),
            objects,
            keys: None,
        })
    }

    /// What the store's key protects (`none` for a plain store).
    pub fn protection(&self) -> Protection {
        self.config.encryption
    }

    /// Takes `key` as this store's secret, if its fingerprint is the one the
    /// config names and (version 3) the config's MAC checks under it: from
    /// now on digests are keyed, chunks sealed (encrypt mode) and manifests
    /// checked. A plain store has no key to take: giving one is an error
    /// the caller reports (format-spec/encryption.md, "The mode is bound").
    pub fn unlock(&mut self, key: &MasterKey) -> Result<(), StoreError> {
        if self.protection() == Protection::None {
            return Ok(());
        }
        let keys = config_keys(&self.root, &self.config, key)?;
        self.catalog.unlock(keys.clone());
        self.keys = Some(keys);
        Ok(())
    }

    /// Fails unless `key` is this store's secret (its fingerprint is the
    /// one the config names).
    pub fn check_key(&self, key: &MasterKey) -> Result<(), StoreError> {
        check_fingerprint(&self.config, key)
    }

    /// The unlocked keys, if any.
    pub fn keys(&self) -> Option<&Arc<StoreKeys>> {
        self.keys.as_ref()
    }

    /// Fails unless `what` can read and write this store's content: a plain
    /// store, or a protected one that is unlocked.
    pub fn require_key(&self, what: &str) -> Result<(), StoreError> {
        if self.protection() == Protection::None || self.keys.is_some() {
            return Ok(());
        }
        Err(StoreError::Locked {
            store: self.root.clone(),
            protection: self.protection(),
            what: what.into(),
        })
    }

    /// How this store addresses chunks; an error on a locked protected store.
    pub fn hasher(&self) -> Result<ChunkHasher, StoreError> {
        self.require_key("hashing chunks")?;
        Ok(self.keys.as_ref().map_or(ChunkHasher::PLAIN, |k| k.hasher()))
    }

    /// An encoder that writes this store's records (sealed if it encrypts).
    pub fn chunk_encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError> {
        self.require_key("writing chunks")?;
        Ok(ChunkEncoder::new(compression)
            .map_err(io_err(&self.root))?
            .with_keys(self.keys.as_ref()))
    }

    /// A decoder that checks this store's records as far as the key allows:
    /// fully when plain or unlocked, by CRC only when locked.
    pub fn chunk_decoder(&self) -> Result<ChunkDecoder, StoreError> {
        ChunkDecoder::for_store(self.protection(), self.keys.as_ref()).map_err(io_err(&self.root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn default_chunk_size(&self) -> ChunkSize {
        ChunkSize::new(self.config.chunk_size).expect("validated at open")
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// The object backend that holds the packs.
    pub fn packs(&self) -> &dyn ObjectBackend {
        self.packs.as_ref()
    }

    /// The snapshots: list, load, publish, forget, protect.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

fn check_fingerprint(config: &StoreConfig, key: &MasterKey) -> Result<(), StoreError> {
    let found = key.fingerprint_hex();
    let expected = config.key_fingerprint.clone().unwrap_or_default();
    if found != expected {
        return Err(StoreError::WrongKey { found, expected });
    }
    Ok(())
}

/// The keys of the protected store at `root` whose config is `config`, if
/// `key` is its secret and (version 3) the config's MAC checks under it:
/// what [`Store::unlock`] takes, and what an index rebuild checks records
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
fn check_root(root: &Path) -> Result<(), StoreError> {
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

/// Removes what a killed rebuild left: `index.rebuild/` (half built, or the
/// old index it had swapped out but not yet deleted), and `index.old-*`
/// (the same, from hoard versions that swapped by two renames).
pub(crate) fn remove_rebuild_leftovers(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for e in fs::read_dir(root).map_err(io_err(root))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "index.rebuild" || name.starts_with("index.old-") {
            fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
            removed.push(format!("removed {name}/, left by a killed index rebuild"));
        }
    }
    Ok(removed)
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename, so that
/// `path` is either absent or complete.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::failpoint::hit(&format!("{file}-fsynced"));
    fs::rename(&tmp, path).map_err(io_err(path))?;
    crate::failpoint::hit(&format!("{file}-renamed"));
    let dir = path.parent().unwrap_or(Path::new("."));
    local_dir::sync_dir(dir).map_err(io_err(dir))?;
    crate::failpoint::hit(&format!("{file}-synced"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_open_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let cs = ChunkSize::new(1 << 20).unwrap();
        let store = Store::init(&root, cs).unwrap();
        assert_eq!(store.default_chunk_size(), cs);
        drop(store);
        assert!(matches!(Store::init(&root, cs), Err(StoreError::NotEmpty(_))));
        assert!(Store::open(&root).is_ok());
        assert!(matches!(
            Store::open(&dir.path().join("nope")),
            Err(StoreError::Missing(_))
        ));
        assert!(matches!(Store::open(dir.path()), Err(StoreError::NotAStore(_))));
        let cfg = root.join("config.json");
        let text = fs::read_to_string(&cfg)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 7");
        fs::write(&cfg, text).unwrap();
        assert!(matches!(
            Store::open(&root),
            Err(StoreError::UnsupportedVersion { found: 7, .. })
        ));
        fs::write(&cfg, b"{not json").unwrap();
        assert!(matches!(Store::open(&root), Err(StoreError::BadConfig { .. })));
    }
}
