//! [`Store`]: one open store, its config, chunk index, objects and
//! catalogue, and the keys that unlock it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::address;
use super::backend::ObjectBackend;
use super::catalog::Catalog;
use super::config::{StoreConfig, PROTECTED_STORE_VERSION, STORE_FORMAT, STORE_VERSION};
use super::config_read::{check_fingerprint, check_root, config_keys, read_config};
use super::error::{io_err, StoreError};
use super::index::{self, ChunkIndex};
use super::key_slots;
use super::local_dir::write_durably;
use super::objects::{LocalObjects, StoreObjects};
use super::remote;
use super::seam::Catalogue;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::ChunkHasher;
use crate::crypto::master_key::MasterKey;
use crate::crypto::{Protection, StoreKeys};
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::chunk_decoder::ChunkDecoder;

pub struct Store {
    pub(super) root: PathBuf,
    pub(super) config: StoreConfig,
    pub(super) index: ChunkIndex,
    /// Where every object lives (chosen from the address at open); packs
    /// are read through `packs`, its pack backend.
    pub(super) objects: Arc<dyn StoreObjects>,
    pub(super) packs: Arc<dyn ObjectBackend>,
    pub(super) catalog: Catalog,
    /// Set by [`unlock`](Store::unlock) on a protected store.
    pub(super) keys: Option<Arc<StoreKeys>>,
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

    /// The snapshots: list, load, forget, protect.
    pub fn catalog(&self) -> &dyn Catalogue {
        &self.catalog
    }

    /// The snapshots as directories, for what creates, publishes and
    /// walks them in place.
    pub(crate) fn snapshot_dirs(&self) -> &Catalog {
        &self.catalog
    }
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
