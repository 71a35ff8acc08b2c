//! The on-disk repository: config, packs, chunk index, snapshots.
//!
//! ```text
//! STORE/config.json        format, version, uuid, default chunk size
//! STORE/index/             RocksDB chunk index (a cache of the packs)
//! STORE/index.lock         flock taken for each index commit
//! STORE/packs/XX/ID.pack   chunk records
//! STORE/snapshots/KIND/ID/TIME/{manifest.json, NAME.img.fidx}
//! STORE/tmp/               per-process scratch space
//! ```

pub mod backend;
pub mod backup_session;
pub mod catalog;
pub mod chunk_cache;
pub mod chunk_reader;
pub mod config;
pub mod index;
pub mod local_dir;
pub mod memory;
pub mod packs;
pub mod scratch;
pub mod session;
pub mod snapshot_dir;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use chunk_reader::ChunkReader;
pub use config::{StoreConfig, STORE_FORMAT, STORE_VERSION};
pub use index::{ChunkIndex, ChunkLocation, IndexError};

use backend::ObjectBackend;
use catalog::Catalog;
use local_dir::LocalDir;

use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::Digest;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::RecordError;
use crate::format::pack::PackError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {0} does not exist (create it with `hoard init --store {0}`)")]
    Missing(PathBuf),
    #[error("{0} is not a hoard store (no config.json)")]
    NotAStore(PathBuf),
    #[error("{path}: malformed store config: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("store {path} has format version {found}; this hoard reads version {STORE_VERSION}")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("store {0} has no chunk index; rebuild it from the packs with `hoard index rebuild`")]
    IndexMissing(PathBuf),
    #[error("cannot create store in {0}: directory is not empty")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Snapshot(#[from] crate::format::snapshot::SnapshotError),
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
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Missing(_) | StoreError::NotAStore(_) | StoreError::IndexMissing(_) => {
                ErrorKind::NotFound
            }
            StoreError::ChunkMissing { .. } => ErrorKind::NotFound,
            StoreError::BadConfig { .. }
            | StoreError::ChunkLength { .. }
            | StoreError::ChunkDamaged { .. } => ErrorKind::Damaged,
            StoreError::UnsupportedVersion { .. } => ErrorKind::Damaged,
            StoreError::NotEmpty(_) => ErrorKind::Invalid,
            StoreError::Io { source, .. } => io_kind(source),
            StoreError::Index(e) => e.kind(),
            StoreError::Pack(e) => e.kind(),
            StoreError::Snapshot(e) => e.kind(),
            StoreError::Busy { .. } => ErrorKind::Busy,
        }
    }

    fn context(&self) -> Context {
        match self {
            StoreError::Missing(root)
            | StoreError::NotAStore(root)
            | StoreError::IndexMissing(root)
            | StoreError::NotEmpty(root) => Context {
                store: Some(root.clone()),
                ..Context::default()
            },
            StoreError::BadConfig { path, .. }
            | StoreError::UnsupportedVersion { path, .. }
            | StoreError::Io { path, .. } => Context::path(path),
            StoreError::Index(e) => e.context(),
            StoreError::Pack(e) => e.context(),
            StoreError::Snapshot(e) => e.context(),
            StoreError::Busy { .. } => Context::default(),
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
    /// Whether a chunk read failed because the chunk is gone or damaged
    /// (bad bytes, lost pack, no index entry), as opposed to a failure that
    /// may pass, such as an I/O error of the store's disk.
    pub fn means_chunk_lost(&self) -> bool {
        match self {
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
    /// Where the packs live: `root` itself for a local store.
    packs: Arc<dyn ObjectBackend>,
    catalog: Catalog,
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
        if root.exists() {
            let mut entries = fs::read_dir(root).map_err(io_err(root))?;
            if entries.next().is_some() {
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
        for sub in ["packs", "snapshots", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
            access.apply(&p)?;
        }
        ChunkIndex::create(&root.join("index"))?;
        let config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            uuid: uuid::Uuid::new_v4().to_string(),
            chunk_size: chunk_size.bytes(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let json = serde_json::to_vec_pretty(&config).expect("config serialises");
        // The config is written last: a directory without it is not a store yet.
        write_durably(&root.join("config.json"), &json)?;
        Store::open(root)
    }

    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_with_packs(root, Arc::new(LocalDir::new(root)))
    }

    /// Opens the store at `root` with its packs in `packs` instead of
    /// `root/packs/`.
    pub fn open_with_packs(root: &Path, packs: Arc<dyn ObjectBackend>) -> Result<Store, StoreError> {
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
        Ok(Store {
            root: root.to_path_buf(),
            config,
            index,
            packs,
            catalog: Catalog::new(root),
        })
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

/// Reads and validates `config.json`: is this a store, of a version we read?
pub(crate) fn read_config(root: &Path) -> Result<StoreConfig, StoreError> {
    if !root.is_dir() {
        return Err(StoreError::Missing(root.to_path_buf()));
    }
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
        Some(v) if v == STORE_VERSION as u64 => {}
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
