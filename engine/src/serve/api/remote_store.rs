//! A store behind `hoard serve`, as the upper seam ([`Repository`]): what
//! backup, restore, verify and the listing commands use, unaware that the
//! store is remote (format-spec/server.md, "Backup sessions", "Reading").
//!
//! The client keeps a private copy of the server's catalogue in a
//! temporary directory, fetched whole when it opens (manifests, verify
//! states, notes, markers: a few small files per snapshot) and index
//! files when they are asked for. The local [`Catalog`] reads that copy
//! with this client's checks, and writes through [`ServerObjects`], which
//! sends each write to the server first. Backups are `remote_sink`'s,
//! reads and verify `remote_read`'s.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use reqwest::Method;

use super::client::Client;
use super::remote_read::{RemoteCheck, RemoteReader};
use super::remote_sink::{RemoteSink, Uploads};
use super::server_objects::ServerObjects;
use super::{store_error, wire, ApiError};
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{Digest, DigestSet};
use crate::crypto::keys::StoreKeys;
use crate::crypto::master_key::MasterKey;
use crate::crypto::Protection;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::notes::NotesOf;
use crate::format::sealed_text::SealedText;
use crate::format::snapshot::{Manifest, SnapshotError, SnapshotName};
use crate::format::verify_state::VerifyState;
use crate::store::catalog::Catalog;
use crate::store::config::StoreConfig;
use crate::store::config_read::{config_keys, parse_config};
use crate::store::seam::{Catalogue, ChunkCheck, ChunkSink, ChunkSource, Protected, Repository};
use crate::store::session::ReadSession;
use crate::store::StoreError;

/// A server repository, open.
pub struct RemoteStore {
    client: Arc<Client>,
    chunk_size: ChunkSize,
    config: StoreConfig,
    /// The store's keys, once [`unlock`](Self::unlock)ed with its secret.
    keys: Option<Arc<StoreKeys>>,
    catalogue: RemoteCatalogue,
    /// Tells the pinger to stop (dropped with the store).
    _pinger: Pinger,
}

impl RemoteStore {
    /// Opens the repository `client` reaches: its settings, its config and
    /// key slots (unlocked here, never on the server), and its catalogue.
    pub fn open(client: Client) -> Result<RemoteStore, ApiError> {
        let client = Arc::new(client);
        let info = client.json(Method::GET, "store", Vec::new())?;
        let chunk_size = info["chunk_size"]
            .as_u64()
            .and_then(|b| ChunkSize::new(b).ok())
            .ok_or_else(|| {
                ApiError::Invalid(format!("{}: no valid chunk size in {info}", client.repo().server))
            })?;
        let mirror = tempfile::Builder::new()
            .prefix("hoard-remote-")
            .tempdir()
            .map_err(|source| ApiError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        copy_bundle(&client, "store/keys", mirror.path(), wire::key_bundle_path)?;
        copy_bundle(
            &client,
            "catalogue",
            &mirror.path().join("snapshots"),
            wire::catalogue_path,
        )?;
        let config_bytes =
            std::fs::read(mirror.path().join("config.json")).map_err(|source| ApiError::Io {
                path: mirror.path().join("config.json"),
                source,
            })?;
        let config = parse_config(mirror.path(), &config_bytes).map_err(|e| ApiError::Malformed {
            path: client.repo().server.clone().into(),
            detail: e.to_string(),
        })?;
        // The server forgets a client silent for its idle timeout; it says
        // how often to ping (a quarter of that).
        let ping_every =
            std::time::Duration::from_millis(info["ping_every_ms"].as_u64().unwrap_or(10_000).max(100));
        let objects = Arc::new(ServerObjects::new(client.clone(), mirror.path()));
        let inner = Catalog::new(mirror.path(), config.encryption, objects.clone());
        Ok(RemoteStore {
            _pinger: Pinger::start(client.clone(), ping_every),
            client,
            chunk_size,
            config,
            keys: None,
            catalogue: RemoteCatalogue {
                inner,
                objects,
                _mirror: mirror,
                fetched: Mutex::default(),
            },
        })
    }

    /// The client's copy of the store's config (`config.json`) and key
    /// slots (`keys/`), where its key is looked for.
    pub fn root(&self) -> &Path {
        self.catalogue._mirror.path()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn protection(&self) -> Protection {
        self.config.encryption
    }

    /// Takes `key` as the store's secret, if it is the one its config
    /// names and the config's MAC checks under it: from now on digests
    /// are keyed, chunks sealed and manifests checked, all here.
    pub fn unlock(&mut self, key: &MasterKey) -> Result<(), StoreError> {
        if self.protection() == Protection::None {
            return Ok(());
        }
        let keys = config_keys(self.root(), &self.config, key)?;
        self.catalogue.inner.unlock(keys.clone());
        self.keys = Some(keys);
        Ok(())
    }

    fn decoder(&self) -> Result<ChunkDecoder, StoreError> {
        ChunkDecoder::for_store(self.protection(), self.keys.as_ref()).map_err(|source| StoreError::Io {
            path: PathBuf::from("zstd"),
            source,
        })
    }
}

/// Copies the files of bundle `path` into `into`.
fn copy_bundle(client: &Client, path: &str, into: &Path, valid: fn(&str) -> bool) -> Result<(), ApiError> {
    let bundle = client.call(Method::GET, path, Vec::new())?;
    let files = wire::parse_files(&bundle, valid).map_err(|e| ApiError::Malformed {
        path: format!("{}/api/v1/{path}", client.repo().server).into(),
        detail: e,
    })?;
    for (name, bytes) in files {
        let at = into.join(name);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(at.parent().expect("a bundled path has a parent"))?;
            std::fs::write(&at, bytes)
        };
        write().map_err(|source| ApiError::Io {
            path: at.clone(),
            source,
        })?;
    }
    Ok(())
}

impl Drop for RemoteStore {
    /// Says goodbye, so the server forgets this client at once.
    fn drop(&mut self) {
        let _ = self.client.call(Method::DELETE, "client", Vec::new());
    }
}

/// Pings the server while the client lives, so it keeps this client's
/// sessions through long stretches without requests (an incremental of
/// an unchanged disk uploads nothing for minutes).
struct Pinger {
    stop: Option<crossbeam_channel::Sender<()>>,
}

impl Pinger {
    fn start(client: Arc<Client>, every: std::time::Duration) -> Pinger {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        std::thread::spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let _ = client.call(Method::POST, "ping", Vec::new());
            }
        });
        Pinger { stop: Some(stop) }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.take();
    }
}

impl Repository for RemoteStore {
    fn default_chunk_size(&self) -> ChunkSize {
        self.chunk_size
    }

    fn require_key(&self, what: &str) -> Result<(), StoreError> {
        if self.protection() == Protection::None || self.keys.is_some() {
            return Ok(());
        }
        Err(StoreError::Locked {
            store: PathBuf::from(&self.client.repo().server),
            protection: self.protection(),
            what: what.into(),
        })
    }

    fn checks_crc_only(&self) -> bool {
        self.protection() != Protection::None && self.keys.is_none()
    }

    fn catalogue(&self) -> &dyn Catalogue {
        &self.catalogue
    }

    fn begin_backup(&self, _what: &str) -> Result<Box<dyn ChunkSink + '_>, StoreError> {
        self.require_key("backing up")?;
        Ok(Box::new(RemoteSink {
            client: self.client.clone(),
            keys: self.keys.clone(),
            catalog: &self.catalogue.inner,
            objects: &self.catalogue.objects,
            known: RwLock::default(),
            session: Mutex::default(),
            batch: Mutex::default(),
            uploads: Uploads::start(self.client.clone()),
        }))
    }

    fn reader(&self) -> Result<Box<dyn ChunkSource + '_>, StoreError> {
        Ok(Box::new(RemoteReader {
            client: &self.client,
            decoder: self.decoder()?,
        }))
    }

    fn hold_reads(&self, _what: &str) -> Option<ReadSession> {
        // The server's own read sessions hold what it serves.
        None
    }

    fn begin_check(&self) -> Result<Box<dyn ChunkCheck + '_>, StoreError> {
        Ok(Box::new(RemoteCheck {
            store: self,
            digests: Vec::new(),
            seen: DigestSet::default(),
        }))
    }

    fn chunk_sizes(&self, digests: &[Digest]) -> Result<Vec<Option<(u32, u32)>>, StoreError> {
        let mut out = Vec::with_capacity(digests.len());
        for part in digests.chunks(wire::MAX_READ_DIGESTS) {
            let body = part.iter().flat_map(|d| d.0).collect();
            let v = self
                .client
                .json(Method::POST, "chunk-sizes", body)
                .map_err(store_error)?;
            let sizes: Vec<Option<(u32, u32)>> = serde_json::from_value(v)
                .map_err(|e| store_error(ApiError::Invalid(format!("chunk sizes: {e}"))))?;
            if sizes.len() != part.len() {
                return Err(store_error(ApiError::Invalid(
                    "chunk sizes: a wrong count".into(),
                )));
            }
            out.extend(sizes);
        }
        Ok(out)
    }
}

/// The server's catalogue, read from this client's copy.
struct RemoteCatalogue {
    inner: Catalog,
    objects: Arc<ServerObjects>,
    _mirror: tempfile::TempDir,
    /// Snapshots whose index files were fetched (which makes their chunks
    /// known to this client's backups of their groups, on the server).
    fetched: Mutex<HashSet<SnapshotName>>,
}

impl RemoteCatalogue {
    /// Fetches the index files of `name` into the copy, unless done.
    fn fetch_indexes(&self, name: &SnapshotName) -> Result<(), StoreError> {
        if self.fetched.lock().expect("lock poisoned").contains(name) {
            return Ok(());
        }
        let manifest = self.inner.load_manifest(name)?;
        let dir = self.inner.dir(name);
        for a in &manifest.archives {
            for file in std::iter::once(&a.index).chain(a.payload.as_ref().map(|p| &p.index)) {
                let path = format!("snapshot/{}/{}/{}/{file}", name.kind, name.id, name.time);
                let bytes = self
                    .objects
                    .client()
                    .call(Method::GET, &path, Vec::new())
                    .map_err(store_error)?;
                let at = dir.join(file);
                std::fs::write(&at, &bytes).map_err(|source| StoreError::Io { path: at, source })?;
            }
        }
        self.fetched.lock().expect("lock poisoned").insert(name.clone());
        Ok(())
    }
}

impl Catalogue for RemoteCatalogue {
    fn list(&self) -> Result<Vec<SnapshotName>, SnapshotError> {
        self.inner.list()
    }
    fn load_manifest(&self, name: &SnapshotName) -> Result<Manifest, SnapshotError> {
        self.inner.load_manifest(name)
    }
    fn is_published(&self, name: &SnapshotName) -> bool {
        self.inner.is_published(name)
    }
    /// Fetches the snapshot's index files first: their readers open them
    /// from the returned directory (and report there what is missing).
    fn dir(&self, name: &SnapshotName) -> PathBuf {
        if let Err(e) = self.fetch_indexes(name) {
            tracing::warn!(snapshot = %name, error = %e, "cannot fetch index files");
        }
        self.inner.dir(name)
    }
    fn protection(&self, name: &SnapshotName) -> Protected {
        self.inner.protection(name)
    }
    fn set_protected(&self, name: &SnapshotName, protect: bool) -> Result<(), StoreError> {
        self.inner.set_protected(name, protect)
    }
    fn forget(&self, name: &SnapshotName) -> Result<(), StoreError> {
        self.inner.forget(name)
    }
    fn verify_state_checked(&self, name: &SnapshotName) -> Option<(VerifyState, bool)> {
        self.inner.verify_state_checked(name)
    }
    fn save_verify_state(&self, name: &SnapshotName, state: &VerifyState) -> Result<(), StoreError> {
        self.inner.save_verify_state(name, state)
    }
    fn task_log(&self, name: &SnapshotName) -> Option<SealedText> {
        self.inner.task_log(name)
    }
    fn save_task_log(&self, name: &SnapshotName, log: &str) -> Result<(), StoreError> {
        self.inner.save_task_log(name, log)
    }
    fn notes(&self, of: &NotesOf) -> Option<SealedText> {
        self.inner.notes(of)
    }
    fn set_notes(&self, of: &NotesOf, text: &str) -> Result<(), StoreError> {
        self.inner.set_notes(of, text)
    }
    fn authenticates(&self) -> bool {
        self.inner.authenticates()
    }
}
