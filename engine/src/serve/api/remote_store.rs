//! A store behind `hoard serve`, as the upper seam ([`Repository`]): what
//! backup, restore, verify and the listing commands use, unaware that the
//! store is remote (format-spec/server.md, "Client").
//!
//! The client keeps a private copy of the server's catalogue in a
//! temporary directory, fetched whole when it opens (manifests, verify
//! states, notes, markers: a few small files per snapshot) and index
//! files when they are asked for. The local [`Catalog`] reads that copy
//! with this client's checks, and writes through [`ServerObjects`], which
//! sends each write to the server first. Chunks go up in batches on two
//! threads while the backup goes on, and come down in batches; every
//! record is checked here as a local store's is.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use reqwest::Method;

use super::client::Client;
use super::server_objects::ServerObjects;
use super::{store_error, wire, ApiError};
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{ChunkHasher, Digest, DigestSet};
use crate::chunking::keyed_cdc::ChunkerKey;
use crate::crypto::keys::StoreKeys;
use crate::crypto::master_key::MasterKey;
use crate::crypto::Protection;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::notes::NotesOf;
use crate::format::sealed_text::SealedText;
use crate::format::snapshot::{Kind, Manifest, SnapshotError, SnapshotName};
use crate::format::verify_state::VerifyState;
use crate::progress::Progress;
use crate::store::catalog::Catalog;
use crate::store::config::StoreConfig;
use crate::store::config_read::{config_keys, parse_config};
use crate::store::seam::{
    BatchItem, Catalogue, CheckOutcome, ChunkCheck, ChunkSink, ChunkSource, Protected, Repository,
};
use crate::store::session::ReadSession;
use crate::store::StoreError;

/// Upload threads per backup: enough to keep one batch on the wire while
/// the next is checked and stored by the server.
const UPLOADERS: usize = 2;

/// Bytes of chunks one verify request reads.
const CHECK_BATCH: usize = 32 << 20;

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
            store: self,
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

/// A backup through the server. What is known is what this session may
/// name without uploading: the chunks of the base indexes it fetched and
/// those it uploaded. There is no asking the server what it has.
struct RemoteSink<'a> {
    store: &'a RemoteStore,
    known: RwLock<DigestSet>,
    /// The server's session id and this snapshot's directory in the copy.
    session: Mutex<Option<(u64, SnapshotName, PathBuf)>>,
    batch: Mutex<Vec<u8>>,
    uploads: Uploads,
}

impl ChunkSink for RemoteSink<'_> {
    fn hasher(&self) -> ChunkHasher {
        self.store
            .keys
            .as_ref()
            .map_or(ChunkHasher::PLAIN, |k| k.hasher())
    }

    fn chunker(&self) -> Option<Arc<ChunkerKey>> {
        self.store.keys.as_ref().and_then(|k| k.chunker())
    }

    /// Sealed here, with the store's keys, when it encrypts: the server
    /// stores what it cannot open.
    fn encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError> {
        Ok(ChunkEncoder::new(compression)
            .map_err(|source| StoreError::Io {
                path: PathBuf::from("zstd"),
                source,
            })?
            .with_keys(self.store.keys.as_ref()))
    }

    fn is_known(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.known.read().expect("lock poisoned").contains(d))
    }

    fn known(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let known = self.known.read().expect("lock poisoned");
        Ok(digests.iter().map(|d| known.contains(d)).collect())
    }

    /// The digests of a base index this session fetched: the server made
    /// them known to the session when it served that index.
    fn seed(&self, digests: &mut dyn Iterator<Item = Digest>) -> Result<usize, StoreError> {
        let mut known = self.known.write().expect("lock poisoned");
        let before = known.len();
        known.extend(digests);
        Ok(known.len() - before)
    }

    fn add_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, StoreError> {
        if !self.known.write().expect("lock poisoned").insert(d) {
            return Ok(false);
        }
        let full = {
            let mut batch = self.batch.lock().expect("lock poisoned");
            wire::push_upload(&mut batch, &d, raw_len, record);
            (batch.len() >= wire::BATCH_TARGET).then(|| std::mem::take(&mut *batch))
        };
        if let Some(batch) = full {
            self.uploads.send(self.session_id()?, batch)?;
        }
        Ok(true)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut *self.batch.lock().expect("lock poisoned"));
        if !batch.is_empty() {
            self.uploads.send(self.session_id()?, batch)?;
        }
        self.uploads.wait()
    }

    /// Opens the server's session for a snapshot dated now; a group whose
    /// newest snapshot has this second waits for the next.
    fn create_snapshot(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), StoreError> {
        let client = &self.store.client;
        let mut attempt = 0;
        let answer = loop {
            let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let body = serde_json::json!({ "kind": kind.as_str(), "id": id, "time": time });
            match client.json(Method::POST, "backup", body.to_string().into_bytes()) {
                Err(ApiError::Remote {
                    kind: crate::error::ErrorKind::Busy,
                    ..
                }) if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1000));
                }
                other => break other.map_err(store_error)?,
            }
        };
        let sid = answer["session"].as_u64();
        let name = answer["snapshot"].as_str().and_then(|s| s.parse().ok());
        let (Some(sid), Some(crate::format::snapshot::SnapshotRef::Exact(name))) = (sid, name) else {
            return Err(store_error(ApiError::Invalid(format!(
                "backup: a malformed answer {answer}"
            ))));
        };
        let dir = self.store.catalogue.inner.dir(&name);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        self.store.catalogue.objects.begin_session(&name, sid);
        *self.session.lock().expect("lock poisoned") = Some((sid, name.clone(), dir.clone()));
        Ok((name, dir))
    }

    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.flush()?;
        let dir = self.session_dir()?;
        self.store.catalogue.inner.publish(&dir, manifest)?;
        self.session.lock().expect("lock poisoned").take();
        Ok(())
    }

    fn abort(&self) {
        if let Some((sid, name, dir)) = self.session.lock().expect("lock poisoned").take() {
            let _ = self
                .store
                .client
                .call(Method::DELETE, &format!("backup/{sid}"), Vec::new());
            self.store.catalogue.objects.end_session(&name);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RemoteSink<'_> {
    fn session_id(&self) -> Result<u64, StoreError> {
        Ok(self.session_entry()?.0)
    }

    fn session_dir(&self) -> Result<PathBuf, StoreError> {
        Ok(self.session_entry()?.2)
    }

    fn session_entry(&self) -> Result<(u64, SnapshotName, PathBuf), StoreError> {
        self.session
            .lock()
            .expect("lock poisoned")
            .clone()
            .ok_or_else(|| {
                store_error(ApiError::Invalid(
                    "no backup session: create_snapshot comes first".into(),
                ))
            })
    }
}

/// Batches sent and not yet answered, and the first failure.
#[derive(Default)]
struct InFlight {
    batches: usize,
    failure: Option<String>,
}

/// Batches on their way to the server, on [`UPLOADERS`] threads.
struct Uploads {
    queue: Option<crossbeam_channel::Sender<(u64, Vec<u8>)>>,
    state: Arc<(Mutex<InFlight>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Uploads {
    fn start(client: Arc<Client>) -> Uploads {
        // Bounded: at most this many batches wait, which bounds memory.
        let (queue, batches) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(UPLOADERS);
        let state = Arc::new((Mutex::new(InFlight::default()), Condvar::new()));
        let threads = (0..UPLOADERS)
            .map(|_| {
                let (batches, state, client) = (batches.clone(), state.clone(), client.clone());
                std::thread::spawn(move || {
                    for (sid, batch) in batches {
                        // Once one batch failed the backup has: the rest
                        // are dropped, not retried one after another.
                        let failed = state.0.lock().expect("lock poisoned").failure.is_some();
                        let sent = match failed {
                            true => Ok(Default::default()),
                            false => client.call(Method::POST, &format!("backup/{sid}/chunks"), batch),
                        };
                        let (lock, done) = &*state;
                        let mut s = lock.lock().expect("lock poisoned");
                        s.batches -= 1;
                        if let Err(e) = sent {
                            s.failure.get_or_insert(e.to_string());
                        }
                        done.notify_all();
                    }
                })
            })
            .collect();
        Uploads {
            queue: Some(queue),
            state,
            threads,
        }
    }

    fn failed(&self) -> Result<(), StoreError> {
        match &self.state.0.lock().expect("lock poisoned").failure {
            Some(e) => Err(StoreError::Remote(std::io::Error::other(e.clone()))),
            None => Ok(()),
        }
    }

    fn send(&self, sid: u64, batch: Vec<u8>) -> Result<(), StoreError> {
        self.failed()?;
        self.state.0.lock().expect("lock poisoned").batches += 1;
        let queue = self.queue.as_ref().expect("open until dropped");
        queue
            .send((sid, batch))
            .expect("the uploaders live as long as the queue");
        Ok(())
    }

    /// Waits for every batch sent; the first failure, if any.
    fn wait(&self) -> Result<(), StoreError> {
        let (lock, done) = &*self.state;
        let mut s = lock.lock().expect("lock poisoned");
        while s.batches > 0 {
            s = done.wait(s).expect("lock poisoned");
        }
        drop(s);
        self.failed()
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.queue.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads chunks through the server, in batches, each record checked here.
struct RemoteReader<'a> {
    client: &'a Client,
    decoder: ChunkDecoder,
}

impl ChunkSource for RemoteReader<'_> {
    fn read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError> {
        let item = BatchItem {
            digest: *digest,
            at: 0,
            len: out.len(),
        };
        self.read_batch(&[item], out).pop().expect("one answer per item")
    }

    fn read_batch(&mut self, items: &[BatchItem], out: &mut [u8]) -> Vec<Result<usize, StoreError>> {
        let mut results = Vec::with_capacity(items.len());
        for part in items.chunks(wire::MAX_READ_DIGESTS) {
            let body = part.iter().flat_map(|i| i.digest.0).collect();
            let answer = self
                .client
                .call(Method::POST, "chunks", body)
                .map_err(|e| e.to_string());
            let answers = answer
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|b| wire::parse_answers(b, part.len()));
            let answers = match answers {
                Ok(answers) => answers,
                Err(e) => {
                    results.extend(
                        part.iter()
                            .map(|_| Err(StoreError::Remote(std::io::Error::other(e.clone())))),
                    );
                    continue;
                }
            };
            for (item, answer) in part.iter().zip(answers) {
                results.push(match answer {
                    Err(why) => Err(StoreError::Remote(std::io::Error::other(format!(
                        "chunk {}: the server says: {why}",
                        item.digest
                    )))),
                    // Checked here as a record from this host's own disk.
                    Ok(record) => self
                        .decoder
                        .decode_to_slice(record, &item.digest, &mut out[item.at..item.at + item.len])
                        .map_err(|source| StoreError::ChunkDamaged {
                            digest: item.digest,
                            pack: PathBuf::from(&self.client.repo().server),
                            source,
                        }),
                });
            }
        }
        results
    }
}

/// Verify through the server: every chunk read back and checked here.
struct RemoteCheck<'a> {
    store: &'a RemoteStore,
    digests: Vec<Digest>,
    seen: DigestSet,
}

impl ChunkCheck for RemoteCheck<'_> {
    fn add(&mut self, d: Digest) -> Result<(), StoreError> {
        if self.seen.insert(d) {
            self.digests.push(d);
        }
        Ok(())
    }

    /// Reads the chunks in batches of at most [`CHECK_BATCH`] bytes (their
    /// sizes asked first), each checked as a restore checks it.
    fn run(self: Box<Self>, _threads: usize, progress: &dyn Progress) -> Result<CheckOutcome, StoreError> {
        let mut outcome = CheckOutcome::default();
        let mut reader = self.store.reader()?;
        let mut buf = Vec::new();
        for part in self.digests.chunks(wire::MAX_READ_DIGESTS) {
            let sizes = self.store.chunk_sizes(part)?;
            let mut items = Vec::new();
            let mut at = 0;
            let mut stored = Vec::new();
            for (d, size) in part.iter().zip(sizes) {
                match size {
                    Some((raw, _)) => stored.push((*d, raw as usize)),
                    None => {
                        outcome.bad.insert(*d, "not in the store".into());
                    }
                }
            }
            let mut stored = stored.into_iter().peekable();
            while let Some((digest, len)) = stored.next() {
                items.push(BatchItem { digest, at, len });
                at += len;
                let full = stored.peek().is_none_or(|(_, next)| at + next > CHECK_BATCH);
                if !full {
                    continue;
                }
                buf.resize(at, 0);
                for (item, r) in items.iter().zip(reader.read_batch(&items, &mut buf)) {
                    match r {
                        Ok(n) => {
                            outcome.chunks += 1;
                            outcome.bytes += n as u64;
                            progress.advance(n as u64);
                        }
                        Err(e) => {
                            outcome.bad.insert(item.digest, e.to_string());
                        }
                    }
                }
                items.clear();
                at = 0;
            }
        }
        Ok(outcome)
    }
}
